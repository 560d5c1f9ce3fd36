"""A NumPy stand-in for the part of CuPy the cupy backend uses, so that the
backend's Python side runs the op contract on a machine without a GPU.

What it checks: every kernel launch against the kernel's CUDA signature
(argument count, scalar widths, pointer dtypes, contiguity) and launch shape
(rows covered, block sizes, shared memory); every cuBLAS call against
column-major GEMM semantics (flags, leading dimensions, batch strides, bounds
of the buffers); and the buffer layouts the backend builds (grouped attention
scores, the embedding CSR, the norm partial sums). Each kernel is replaced
by a NumPy twin that follows the contract written above it in the .cu file,
not its threads: the thread-level code of those kernels runs only on a GPU.
The flash attention kernels are the exception: their own CUDA C++ runs on
the host (cuda_host.py), each pointer argument copied into a buffer between
NaN-filled guards (outputs start as NaN too), so that reads and writes past
an array, and outputs left unwritten, show.

    ops = cuda_emulator.backend()   # a CupyBackend whose xp is this stand-in
    ops = cuda_emulator.backend(compute_capability="75")   # no tensor cores
"""

from __future__ import annotations

import ctypes
import math
import re
import types
import weakref

import numpy as np

from ferroformer.backends import cuda as sources
from ferroformer.backends.cupy_backend import CupyBackend, bfloat16_dtype

import cuda_host

SM_COUNT = 4
SHARED_DEFAULT_LIMIT = 48 * 1024
HOST_ORDER = 0  # the order host-run kernels run a block's threads in: 0 ascending, 1 descending
HOST_WORK_LIMIT = (
    2**27
)  # larger flash launches (query x key x head dim products) take the NumPy twins
# cudaDataType -> NumPy dtype, for the GEMMs
CUDA_DTYPES = {0: np.dtype(np.float32), 2: np.dtype(np.float16)}
if bfloat16_dtype() is not None:
    CUDA_DTYPES[14] = bfloat16_dtype()
TEMPLATE_DTYPES = {
    "float": np.dtype(np.float32),
    "__half": np.dtype(np.float16),
    "__nv_bfloat16": bfloat16_dtype(),
}


class DeviceArray(np.ndarray):
    """A NumPy array playing a cupy.ndarray: ``.get()``, ``.data.ptr``."""

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.__array_interface__["data"][0])

    def get(self):
        return np.array(self)


_allocations = []  # (first byte, bytes, weakref) of every buffer handed out


def _wrap(x):
    if len(_allocations) > 10_000:
        _allocations[:] = [a for a in _allocations if a[2]() is not None]
    out = np.asarray(x).view(DeviceArray)
    base = out
    while isinstance(base.base, np.ndarray):
        base = base.base
    _allocations.append((base.__array_interface__["data"][0], base.nbytes, weakref.ref(base)))
    return out


def _buffer_at(ptr, nbytes, dtype=np.float32):
    """The memory [ptr, ptr + nbytes) as dtype, which must lie inside one live buffer."""
    for start, size, ref in reversed(_allocations):
        if ref() is not None and start <= ptr and ptr + nbytes <= start + size:
            return np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr)).view(dtype)
    raise AssertionError(f"GEMM reads or writes {nbytes} bytes at {ptr:#x}, outside every buffer")


# -- cuBLAS ---------------------------------------------------------------------------


def _gemm_strided_batched_ex(
    handle,
    transa,
    transb,
    m,
    n,
    k,
    alpha,
    a,
    atype,
    lda,
    stride_a,
    b,
    btype,
    ldb,
    stride_b,
    beta,
    c,
    ctype,
    ldc,
    stride_c,
    batch,
    compute,
    algo,
):
    """cublasGemmStridedBatchedEx, column-major: C_i = alpha op(A_i) op(B_i) + beta C_i.
    A and B of one type (float32, float16 or bfloat16), C of theirs or float32."""
    assert atype == btype and atype in CUDA_DTYPES and ctype in (atype, 0), (atype, btype, ctype)
    assert compute == cublas.CUBLAS_COMPUTE_32F, "float32 compute"
    assert all(
        isinstance(v, int) for v in (m, n, k, lda, ldb, ldc, stride_a, stride_b, stride_c, batch)
    )
    assert m >= 1 and n >= 1 and k >= 1 and batch >= 1
    one = np.ctypeslib.as_array((ctypes.c_float * 1).from_address(alpha))[0]
    zero = np.ctypeslib.as_array((ctypes.c_float * 1).from_address(beta))[0]
    assert (one, zero) == (1.0, 0.0)

    def matrices(
        ptr, rows, cols, ld, stride, dtype
    ):  # col-major (rows, cols), leading dimension ld
        assert ld >= max(1, rows), f"leading dimension {ld} < {rows} rows"
        count = (batch - 1) * stride + (cols - 1) * ld + rows
        size = dtype.itemsize
        flat = _buffer_at(ptr, size * count, dtype)
        return np.lib.stride_tricks.as_strided(
            flat, (batch, rows, cols), (size * stride, size, size * ld)
        )

    op_a = matrices(
        a, *((m, k) if transa == cublas.CUBLAS_OP_N else (k, m)), lda, stride_a, CUDA_DTYPES[atype]
    )
    op_b = matrices(
        b, *((k, n) if transb == cublas.CUBLAS_OP_N else (n, k)), ldb, stride_b, CUDA_DTYPES[btype]
    )
    op_a = op_a if transa == cublas.CUBLAS_OP_N else op_a.transpose(0, 2, 1)
    op_b = op_b if transb == cublas.CUBLAS_OP_N else op_b.transpose(0, 2, 1)
    assert stride_c >= m * n or batch == 1
    out = matrices(c, m, n, ldc, stride_c, CUDA_DTYPES[ctype])
    out[...] = np.matmul(op_a.astype(np.float64), op_b.astype(np.float64))


cublas = types.SimpleNamespace(
    CUBLAS_OP_N=0,
    CUBLAS_OP_T=1,
    CUBLAS_COMPUTE_32F=68,
    CUBLAS_GEMM_DEFAULT=-1,
    gemmStridedBatchedEx=_gemm_strided_batched_ex,
)


# -- kernels: their signatures, launch shapes and NumPy twins -----------------------------

POINTER_DTYPES = {"T": np.float32, "float": np.float32, "i64": np.int64, "bool": np.bool_}
SCALAR_TYPES = {"i64": np.int64, "int": np.int32, "float": np.float32}
FLAT_KERNELS = {
    "activation_forward",
    "activation_backward",
    "swiglu_forward",
    "swiglu_backward",
    "column_sum",
    "rope",
    "adamw_step",
}


def _const_pointers(code):
    """kernel name -> names of its const pointer parameters (its inputs)."""
    return {
        name: {m.group(1) for m in re.finditer(r"const\s+\w+\s*\*\s*(\w+)", params)}
        for name, params in re.findall(r"__global__\s+void\s+(\w+)\s*\(([^)]*)\)", code)
    }


def _signatures(code):
    """kernel name -> [(parameter name, base type, is pointer)] from the CUDA source."""
    out = {}
    for name, params in re.findall(r"__global__\s+void\s+(\w+)\s*\(([^)]*)\)", code):
        parsed = []
        for p in params.split(","):
            m = re.fullmatch(r"\s*(?:const\s+)?(\w+)\s*(\*?)\s*(\w+)\s*", p)
            assert m, f"cannot read parameter {p!r} of {name}"
            parsed.append((m.group(3), m.group(1), bool(m.group(2))))
        out[name] = parsed
    return out


class Kernel:
    def __init__(self, expression, params, inputs=frozenset()):
        self.expression = expression
        self.name, rest = expression.split("<", 1)
        self.template_args = [t.strip() for t in rest.rstrip(">").split(",")]
        self.params = params
        self.inputs = inputs  # const pointer parameters
        self.max_dynamic_shared_size_bytes = SHARED_DEFAULT_LIMIT

    def _pointer_dtype(self, ptype):
        """T is the kernel's storage type, its first template argument."""
        return (
            TEMPLATE_DTYPES[self.template_args[0]]
            if ptype == "T"
            else np.dtype(POINTER_DTYPES[ptype])
        )

    def __call__(self, grid, block, args, shared_mem=0):
        assert isinstance(grid, tuple) and isinstance(block, tuple) and isinstance(args, tuple)
        assert len(args) == len(self.params), (
            f"{self.expression}: {len(args)} arguments, wants {len(self.params)}"
        )
        named = {}
        for value, (pname, ptype, pointer) in zip(args, self.params):
            where = f"{self.expression} argument {pname}"
            if pointer:
                if isinstance(value, np.uint64):
                    assert value == 0, where
                    named[pname] = None
                    continue
                assert isinstance(value, DeviceArray), f"{where}: {type(value).__name__}"
                assert value.dtype == self._pointer_dtype(ptype), f"{where}: dtype {value.dtype}"
                assert value.flags.c_contiguous, f"{where} is not contiguous"
                named[pname] = np.asarray(value).reshape(-1)
            else:
                assert type(value) is SCALAR_TYPES[ptype], (
                    f"{where}: {type(value).__name__} for {ptype}"
                )
                named[pname] = value.item()
        self._check_launch(grid, block, shared_mem, named)
        if self.expression in _host_kernels() and _host_work(self.name, named) <= HOST_WORK_LIMIT:
            self._run_on_host(grid, block, args, shared_mem)
        else:
            TWINS[self.name](self, **named)

    def _run_on_host(self, grid, block, args, shared_mem):
        """The kernel's CUDA C++ on the host, on guarded copies of its arrays."""
        family, dtype = _host_kernels()[self.expression]
        values, guarded = [], []
        for value, (pname, _, pointer) in zip(args, self.params):
            if not pointer or isinstance(value, np.uint64):
                values.append(int(value) if pointer else value)
                continue
            g = _Guarded(np.asarray(value).reshape(-1), pname in self.inputs)
            values.append(g.address)
            guarded.append((pname, g))
        cuda_host.host_module(family, dtype).launch(
            self.expression, grid, block, shared_mem, values, HOST_ORDER
        )
        for pname, g in guarded:
            g.finish(f"{self.expression} argument {pname}")

    def _check_launch(self, grid, block, shared_mem, a):
        threads = math.prod(block)
        assert 1 <= threads <= 1024 and block[0] % 32 == 0 and grid[0] >= 1
        assert shared_mem <= self.max_dynamic_shared_size_bytes
        if self.name in FLASH_LAUNCHES:
            FLASH_LAUNCHES[self.name](self, grid, block, shared_mem, a)
        elif self.name in FLAT_KERNELS:
            assert len(block) == 1 and shared_mem == 0
        elif self.name == "norm_backward":
            assert len(block) == 1 and grid[0] * a["rows_per_block"] >= a["rows"]
            assert a["partial"].size == grid[0] * 2 * a["C"]
            assert shared_mem == (2 * a["C"] * 4 if a["acc_in_shared"] else 0)
            assert shared_mem + 128 <= SHARED_DEFAULT_LIMIT
        else:  # a row kernel: one warp per row (block (32, R)) or one block per row
            rows = next(v for k, v in a.items() if k in ("rows", "N", "n", "V"))
            per_block = block[1] if len(block) > 1 else 1
            assert per_block == 1 or block[0] == 32, "rows of several warps need blockDim.y == 1"
            assert grid[0] * per_block >= rows and shared_mem == 0


class RawModule:
    def __init__(self, code, options=(), name_expressions=()):
        assert isinstance(options, tuple)
        self.signatures = _signatures(code)
        self.inputs = _const_pointers(code)
        self.names = list(name_expressions)

    def compile(self):
        pass

    def get_function(self, expression):
        assert expression in self.names
        name = expression.split("<", 1)[0]
        return Kernel(expression, self.signatures[name], frozenset(self.inputs[name]))


# -- the flash attention kernels: launch geometry, host runs --------------------------------


class _Guarded:
    """A copy of a kernel argument between NaN-filled guards (0xff bytes); an
    output (not an input) starts as 0xff too. finish() checks that the guards,
    and an input, are intact, and copies an output back."""

    GUARD = 4096

    def __init__(self, array, is_input):
        self.array, self.is_input = array, is_input
        n = array.nbytes
        self.raw = np.full(n + 2 * self.GUARD + 256, 0xFF, np.uint8)
        self.start = self.GUARD + (-(self.raw.ctypes.data + self.GUARD)) % 256
        self.inner = self.raw[self.start : self.start + n]
        if is_input:
            self.inner[...] = array.view(np.uint8)
        self.address = self.inner.ctypes.data

    def finish(self, what):
        before, after = self.raw[: self.start], self.raw[self.start + self.inner.size :]
        assert (before == 0xFF).all() and (after == 0xFF).all(), f"{what}: written out of bounds"
        if self.is_input:
            assert (self.inner == self.array.view(np.uint8)).all(), f"{what}: an input was written"
        else:
            self.array.view(np.uint8)[...] = self.inner


def _host_kernels():
    return cuda_host.kernel_index() if cuda_host.unavailable() is None else {}


def _cdiv(a, b):
    return -(-a // b)


def _check_flash(k, grid, block, shared_mem, a):
    """Grid and tiles of a flash kernel: one block per 16 (CUDA cores) or 64
    (tensor cores) rows of every head; the smallest instantiation for D."""
    assert block == (128,) and len(grid) == 1
    dim = int(k.template_args[1])
    d, tq, tk, hq, hkv = a["D"], a.get("Tq"), a["Tk"], a["Hq"], a["Hkv"]
    assert hq % hkv == 0 and 0 < d <= dim
    if k.name.endswith("_mma"):
        assert DEVICE_CC[0] >= sources.TENSOR_CORE_MIN_ARCH, "tensor-core kernels need sm_80+"
        assert d % 8 == 0 and dim == min(m for m in sources.MMA_HEAD_DIMS if d <= m)
        rows = 64
        for name, x in a.items():
            if isinstance(x, np.ndarray) and x.dtype == TEMPLATE_DTYPES[k.template_args[0]]:
                assert x.ctypes.data % 16 == 0, (
                    f"{k.expression} argument {name} is not 16-byte aligned"
                )
    else:
        assert dim == min(m for m in sources.SIMT_HEAD_DIMS if d <= m)
        rows = 16
    if "backward_kv" in k.name:
        b = a["dk"].size // (hkv * tk * d)
        assert grid[0] == _cdiv(tk, rows) * b * hkv
    else:
        b = a["q"].size // (hq * tq * d)
        assert grid[0] == _cdiv(tq, rows) * b * hq and a["lse"].size == b * hq * tq
    if a["key_mask"] is not None:
        assert a["key_mask"].size == b * tk


def _check_decode(k, grid, block, shared_mem, a):
    """Every query head gets `splits` blocks of `chunk` keys, none empty."""
    assert block == (128,) and len(grid) == 1 and shared_mem == 0
    d_max, splits, chunk, tk = int(k.template_args[1]), a["splits"], a["chunk"], a["Tk"]
    assert grid[0] % splits == 0 and a["D"] <= d_max
    rows = grid[0] // splits
    assert a["partial"].size == splits * rows * (d_max + 2) and a["q"].size == rows * a["D"]
    assert splits * chunk >= tk and (tk == 0 or (splits - 1) * chunk < tk)
    batch, cap = rows // a["Hq"], a["Tcap"]  # k, v (B, Hkv, Tcap, D), key_mask (B, Tcap)
    assert tk <= cap and a["k"].size == a["v"].size == batch * a["Hkv"] * cap * a["D"]
    assert a["key_mask"] is None or a["key_mask"].size == batch * cap


def _host_work(name, a):
    """Multiply-adds of a flash launch, which decide between the host run and the twin."""
    if "Tk" not in a or "D" not in a:
        return 0
    rows = a["lse"].size if "lse" in a else a["q"].size // max(a["D"], 1)
    return rows * a["Tk"] * a["D"]


def _flash_arrays(a, with_grads=False):
    """q (B, Hq, Tq, D), k, v with k and v repeated to Hq heads, in float64, and
    the (B, Hq, Tq, Tk) mask of hidden keys (causal bottom-right, padding)."""
    hq, hkv, tk, d = a["Hq"], a["Hkv"], a["Tk"], a["D"]
    b = a["k"].size // (hkv * tk * d) if tk * d else a["lse"].size // (hq * a["Tq"])
    tq = a.get("Tq", 1)
    q = a["q"].reshape(b, hq, tq, d).astype(np.float64)
    k = np.repeat(a["k"].reshape(b, hkv, tk, d).astype(np.float64), hq // hkv, axis=1)
    v = np.repeat(a["v"].reshape(b, hkv, tk, d).astype(np.float64), hq // hkv, axis=1)
    hidden = np.zeros((b, 1, tq, tk), bool)
    if a.get("causal"):
        hidden |= (np.arange(tk)[None, :] > np.arange(tq)[:, None] + tk - tq)[None, None]
    if a["key_mask"] is not None:
        hidden |= a["key_mask"].reshape(b, 1, 1, tk)
    return b, q, k, v, hidden


def _probabilities(a, q, k, hidden, lse):
    """P = exp(scale q.k - lse) on visible keys, 0 elsewhere and on rows with lse = -inf."""
    s = a["scale"] * (q @ np.swapaxes(k, -1, -2))
    finite = np.isfinite(lse)[..., None]
    return np.where(hidden | ~finite, 0.0, np.exp(s - np.where(finite, lse[..., None], 0.0)))


def _attention_forward_flash(k, q, k_, v, key_mask, o, lse, **a):
    a.update(q=q, k=k_, v=v, key_mask=key_mask)
    _, q4, k4, v4, hidden = _flash_arrays(a)
    s = np.where(hidden, -np.inf, a["scale"] * (q4 @ np.swapaxes(k4, -1, -2)))
    mx = s.max(axis=-1, keepdims=True, initial=-np.inf)
    e = np.exp(s - np.where(np.isfinite(mx), mx, 0.0))
    total = e.sum(axis=-1, keepdims=True)
    o.reshape(q4.shape)[...] = (e / np.where(total > 0, total, 1.0)) @ v4
    lse.reshape(q4.shape[:3])[...] = np.where(
        total[..., 0] > 0, np.log(np.where(total > 0, total, 1.0))[..., 0] + mx[..., 0], -np.inf
    )


def _flash_backward_terms(a, q, k_, v, d_out, lse, delta, key_mask):
    a.update(q=q, k=k_, v=v, key_mask=key_mask)
    b, q4, k4, v4, hidden = _flash_arrays(a)
    shape = q4.shape
    do4 = d_out.reshape(shape).astype(np.float64)
    p = _probabilities(a, q4, k4, hidden, lse.reshape(shape[:3]).astype(np.float64))
    ds = p * (do4 @ np.swapaxes(v4, -1, -2) - delta.reshape(shape[:3])[..., None]) * a["scale"]
    return b, q4, k4, do4, p, ds


def _group_sum(x, hkv):
    b, hq, t, d = x.shape
    return x.reshape(b, hkv, hq // hkv, t, d).sum(axis=2)


def _attention_backward_kv_flash(k, q, k_, v, d_out, lse, delta, key_mask, dk, dv, **a):
    _, q4, _, do4, p, ds = _flash_backward_terms(a, q, k_, v, d_out, lse, delta, key_mask)
    dk[...] = _group_sum(np.swapaxes(ds, -1, -2) @ q4, a["Hkv"]).reshape(-1)
    dv[...] = _group_sum(np.swapaxes(p, -1, -2) @ do4, a["Hkv"]).reshape(-1)


def _attention_backward_q_flash(k, q, k_, v, d_out, lse, delta, key_mask, dq, **a):
    _, _, k4, _, _, ds = _flash_backward_terms(a, q, k_, v, d_out, lse, delta, key_mask)
    dq[...] = (ds @ k4).reshape(-1)


def _attention_backward_delta(k, d_out, out, delta, rows, D):
    delta[...] = (d_out.reshape(rows, D).astype(np.float64) * out.reshape(rows, D)).sum(axis=1)


def _attention_decode_partial(
    k, q, k_, v, key_mask, partial, Hq, Hkv, Tk, Tcap, D, scale, chunk, splits
):
    rows = q.size // (Hq * D)  # B

    def used(x, heads, width):  # keys [0, Tk) of each head's Tcap
        return x.reshape(rows * heads, Tcap, width)[:, :Tk].reshape(-1)

    k_, v = used(k_, Hkv, D), used(v, Hkv, D)
    key_mask = None if key_mask is None else used(key_mask, 1, 1)
    a = dict(q=q, k=k_, v=v, key_mask=key_mask, Hq=Hq, Hkv=Hkv, Tk=Tk, D=D, scale=scale, Tq=1)
    b, q4, k4, v4, hidden = _flash_arrays(a)
    width = int(k.template_args[1]) + 2
    out = partial.reshape(splits, b * Hq, width)
    s2 = np.where(
        hidden, -np.inf, scale * (q4 @ np.swapaxes(k4, -1, -2)) / math.log(2)
    )  # log2 domain
    for split in range(splits):
        keys = slice(split * chunk, min(Tk, (split + 1) * chunk))
        part = s2[..., keys].reshape(b * Hq, -1)
        m = part.max(axis=1, initial=-np.inf)
        e = np.exp2(part - np.where(np.isfinite(m), m, 0.0)[:, None])
        out[split, :, :D] = (e[:, None, :] @ v4[..., keys, :].reshape(b * Hq, -1, D))[:, 0]
        out[split, :, D : width - 2] = 0.0
        out[split, :, width - 2] = m
        out[split, :, width - 1] = e.sum(axis=1)


def _attention_decode_merge(k, partial, o, lse, rows, D, width, splits):
    part = partial.reshape(splits, rows, width).astype(np.float64)
    m = part[:, :, width - 2]
    top = m.max(axis=0)
    weight = np.exp2(m - np.where(np.isfinite(top), top, 0.0))
    total = (weight * part[:, :, width - 1]).sum(axis=0)
    o.reshape(rows, D)[...] = (weight[:, :, None] * part[:, :, :D]).sum(axis=0) / np.where(
        total > 0, total, 1
    )[:, None]
    lse[...] = np.where(
        total > 0, (top + np.log2(np.where(total > 0, total, 1))) * math.log(2), -np.inf
    )


def _twin(fn):
    """Adapts a flash twin to the emulator's keyword call (the kernels' k is a keyword too)."""

    def call(kernel, **named):
        named["k_"] = named.pop("k")
        return fn(kernel, **named)

    return call


FLASH_LAUNCHES = {
    **{
        f"attention_{kernel}_{kind}": _check_flash
        for kernel in ("forward", "backward_kv", "backward_q")
        for kind in ("simt", "mma")
    },
    "attention_decode_partial": _check_decode,
}
DEVICE_CC = [90]  # the emulated device's compute capability (make_module sets it)


def _masked(k, rows, C, Tq, rows_per_batch, causal, key_mask):
    r = np.arange(rows)[:, None]
    j = np.arange(C)[None, :]
    masked = j > (r % Tq) + C - Tq if causal else np.zeros((rows, C), bool)
    if key_mask is not None:
        masked = masked | key_mask.reshape(-1, C)[r[:, 0] // rows_per_batch]
    return masked


def _softmax_forward(k, x, y, lse, key_mask, rows, C, Tq, rows_per_batch, scale, causal):
    s = np.where(
        _masked(k, rows, C, Tq, rows_per_batch, causal, key_mask),
        -np.inf,
        scale * x.reshape(rows, C).astype(np.float64),
    )
    mx = s.max(axis=1, keepdims=True, initial=-np.inf)
    e = np.exp(s - np.where(np.isfinite(mx), mx, 0))
    total = e.sum(axis=1, keepdims=True)
    y.reshape(rows, C)[...] = e / np.where(total > 0, total, 1)
    if lse is not None:
        lse[...] = np.where(
            total[:, 0] > 0, np.log(np.where(total[:, 0] > 0, total[:, 0], 1)) + mx[:, 0], -np.inf
        )


def _softmax_backward(k, dy, y, dx, rows, C, scale):
    dy, y = dy.reshape(rows, C).astype(np.float64), y.reshape(rows, C).astype(np.float64)
    dx.reshape(rows, C)[...] = scale * y * (dy - (dy * y).sum(axis=1, keepdims=True))


def _attention_backward_scores(
    k, s_p, dp_ds, d_out, out, lse, key_mask, rows, C, Tq, rows_per_batch, D, scale, causal
):
    s, dp = s_p.reshape(rows, C), dp_ds.reshape(rows, C)
    delta = (d_out.reshape(rows, D).astype(np.float64) * out.reshape(rows, D)).sum(
        axis=1, keepdims=True
    )
    hidden = _masked(k, rows, C, Tq, rows_per_batch, causal, key_mask) | ~np.isfinite(lse)[:, None]
    p = np.where(
        hidden, 0.0, np.exp(scale * s.astype(np.float64) - np.where(hidden, 0, lse[:, None]))
    )
    s[...] = p
    dp[...] = scale * p * (dp - delta)


def _norm_forward(k, x, gamma, beta, y, mean, rstd, rows, C, eps):
    centered = k.template_args[1] == "true"
    x = x.reshape(rows, C).astype(np.float64)
    mu = x.mean(axis=1) if centered else np.zeros(rows)
    r = 1.0 / np.sqrt(((x - mu[:, None]) ** 2).mean(axis=1) + eps)
    out = (x - mu[:, None]) * r[:, None] * gamma
    y.reshape(rows, C)[...] = out + beta if centered else out
    if centered:
        mean[...] = mu
    rstd[...] = r


def _norm_backward(
    k, dy, x, gamma, mean, rstd, dx, partial, rows, C, rows_per_block, acc_in_shared
):
    centered = k.template_args[1] == "true"
    dy, x = dy.reshape(rows, C).astype(np.float64), x.reshape(rows, C).astype(np.float64)
    mu = mean if centered else np.zeros(rows)
    xhat = (x - mu[:, None]) * rstd[:, None]
    g = dy * gamma
    centered_g = g - g.mean(axis=1, keepdims=True) if centered else g
    dx.reshape(rows, C)[...] = rstd[:, None] * (
        centered_g - xhat * (g * xhat).mean(axis=1, keepdims=True)
    )
    parts = partial.reshape(-1, 2, C)
    for b in range(parts.shape[0]):
        chunk = slice(b * rows_per_block, min(rows, (b + 1) * rows_per_block))
        parts[b, 0] = (dy[chunk] * xhat[chunk]).sum(axis=0)
        parts[b, 1] = dy[chunk].sum(axis=0) if centered else 0.0


def _column_sum(k, partial, out, parts, n):
    assert partial.size == parts * n and out.size == n
    out[...] = partial.reshape(parts, n).sum(axis=0)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _erf(x):
    return np.vectorize(math.erf)(x)


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _gelu_tanh_grad(x):
    th = np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))
    du = math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * x * x)
    return 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * du


def _gelu_erf(x):
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


def _gelu_erf_grad(x):
    return 0.5 * (1 + _erf(x / math.sqrt(2))) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _silu(x):
    return x * _sigmoid(x)


def _silu_grad(x):
    return _sigmoid(x) * (1 + x * (1 - _sigmoid(x)))


ACTIVATION_TWINS = {  # the struct in activation.cu -> (f, f')
    "GeluTanh": (_gelu_tanh, _gelu_tanh_grad),
    "GeluErf": (_gelu_erf, _gelu_erf_grad),
    "Relu": (lambda x: np.maximum(x, 0), lambda x: (x > 0).astype(np.float64)),
    "Silu": (_silu, _silu_grad),
}


def _activation_forward(k, x, y, n):
    y[...] = ACTIVATION_TWINS[k.template_args[1]][0](x.astype(np.float64))


def _activation_backward(k, dy, x, dx, n):
    dx[...] = dy * ACTIVATION_TWINS[k.template_args[1]][1](x.astype(np.float64))


def _swiglu_forward(k, gate, up, h, n):
    h[...] = _silu(gate.astype(np.float64)) * up


def _swiglu_backward(k, dh, gate, up, dgate, dup, n):
    g = gate.astype(np.float64)
    dgate[...] = dh * up * _silu_grad(g)
    dup[...] = dh * _silu(g)


def _lse(z):
    mx = z.max(axis=1, keepdims=True)
    return (np.log(np.exp(z - mx).sum(axis=1, keepdims=True)) + mx)[:, 0]


def _cross_entropy_forward(k, logits, targets, lse, loss_rows, N, V, ignore_index, smoothing):
    z = logits.reshape(N, V).astype(np.float64)
    lse[...] = l = _lse(z)
    counted = targets != ignore_index
    picked = z[np.arange(N), np.where(counted, targets, 0)]
    loss = (1 - smoothing) * (l - picked) + smoothing * (l - z.mean(axis=1))
    loss_rows[...] = np.where(counted, loss, 0.0)


def _cross_entropy_backward(k, logits, targets, lse, dlogits, N, V, ignore_index, off, on, scale):
    z = logits.reshape(N, V).astype(np.float64)
    d = np.exp(z - lse[:, None]) - off
    counted = targets != ignore_index
    rows = np.nonzero(counted)[0]
    d[rows, targets[rows]] -= on
    d[~counted] = 0
    dlogits.reshape(N, V)[...] = d * scale


def _embedding_forward(k, weight, ids, out, n, C):
    out.reshape(n, C)[...] = weight.reshape(-1, C)[ids]


def _embedding_backward(k, dy, order, offsets, dweight, V, C):
    assert offsets.size == V + 1 and offsets[0] == 0 and offsets[-1] == order.size
    assert (np.diff(offsets) >= 0).all()
    dy = dy.reshape(-1, C)
    dw = dweight.reshape(V, C)
    for v in range(V):
        positions = order[offsets[v] : offsets[v + 1]]
        assert (np.diff(positions) > 0).all(), "positions of one id must ascend"
        acc = np.zeros(C, np.float32)
        for p in positions:  # the kernel's order: float32, one position after the other
            acc += dy[p]
        dw[v] = acc


def _rope(k, x, cosines, sines, out, pairs, positions, half, sin_sign):
    p = np.arange(pairs)
    at = (p // half) % positions * half + p % half
    c, s = cosines[at].astype(np.float64), sin_sign * sines[at].astype(np.float64)
    x0, x1 = x[0::2].astype(np.float64), x[1::2].astype(np.float64)
    out[0::2] = x0 * c - x1 * s
    out[1::2] = x0 * s + x1 * c


def _adamw_step(
    k,
    param,
    grad,
    m,
    v,
    n,
    lr,
    beta1,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    eps,
    decay,
    bias1,
    bias2,
):
    f = np.float32
    m[...] = f(beta1) * m + f(one_minus_beta1) * grad
    v[...] = f(beta2) * v + f(one_minus_beta2) * grad * grad
    param[...] = param * f(decay) - f(lr) * (m / f(bias1)) / (np.sqrt(v / f(bias2)) + f(eps))


TWINS = {
    **{f"attention_forward_{kind}": _twin(_attention_forward_flash) for kind in ("simt", "mma")},
    **{
        f"attention_backward_kv_{kind}": _twin(_attention_backward_kv_flash)
        for kind in ("simt", "mma")
    },
    **{
        f"attention_backward_q_{kind}": _twin(_attention_backward_q_flash)
        for kind in ("simt", "mma")
    },
    "attention_backward_delta": _attention_backward_delta,
    "attention_decode_partial": _twin(_attention_decode_partial),
    "attention_decode_merge": _attention_decode_merge,
    "softmax_forward": _softmax_forward,
    "softmax_backward": _softmax_backward,
    "attention_backward_scores": _attention_backward_scores,
    "norm_forward": _norm_forward,
    "norm_backward": _norm_backward,
    "column_sum": _column_sum,
    "activation_forward": _activation_forward,
    "activation_backward": _activation_backward,
    "swiglu_forward": _swiglu_forward,
    "swiglu_backward": _swiglu_backward,
    "cross_entropy_forward": _cross_entropy_forward,
    "cross_entropy_backward": _cross_entropy_backward,
    "embedding_forward": _embedding_forward,
    "embedding_backward": _embedding_backward,
    "rope": _rope,
    "adamw_step": _adamw_step,
}


# -- the module itself --------------------------------------------------------------------


def _fn(f):
    return lambda *a, **kw: _wrap(f(*a, **kw))


def make_module(compute_capability="90"):
    """A module standing in for cupy, as far as the cupy backend uses it."""
    DEVICE_CC[0] = int(compute_capability)
    cp = types.ModuleType("cupy")
    for name in (
        "asarray",
        "ascontiguousarray",
        "empty",
        "empty_like",
        "zeros",
        "stack",
        "sort",
        "arange",
        "cumsum",
        "bincount",
        "broadcast_to",
        "swapaxes",
        "count_nonzero",
        "any",
        "argmax",
        "ones",
        "full",
        "isfinite",
        "array",
        "zeros_like",
        "ones_like",
        "full_like",
        "concatenate",
        "where",
        "repeat",
        "sqrt",
        "maximum",
        "abs",
        "take_along_axis",
        "minimum",
        "trunc",
        "copysign",
        "isnan",
    ):
        setattr(cp, name, _fn(getattr(np, name)))
    for name in ("int64", "int32", "bool_", "float32", "float16", "float64", "int8", "uint8"):
        setattr(cp, name, getattr(np, name))
    cp.ndarray = DeviceArray
    cp.RawModule = RawModule
    cp.lib = types.SimpleNamespace(
        stride_tricks=types.SimpleNamespace(
            as_strided=_fn(
                lambda x, shape, strides: np.lib.stride_tricks.as_strided(x, shape, strides)
            )
        )
    )
    device = types.SimpleNamespace(
        attributes={"MultiProcessorCount": SM_COUNT}, compute_capability=str(compute_capability)
    )
    compiler = types.SimpleNamespace(CompileException=type("CompileException", (Exception,), {}))
    runtime = types.SimpleNamespace(getDeviceCount=lambda: 1, CUDARuntimeError=RuntimeError)
    cp.cuda = types.SimpleNamespace(
        Device=lambda: device,
        get_cublas_handle=lambda: 0,
        cublas=cublas,
        compiler=compiler,
        runtime=runtime,
    )
    return cp


def backend(compute_capability="90"):
    """A CupyBackend running on the stand-in."""
    return CupyBackend(make_module(compute_capability))
