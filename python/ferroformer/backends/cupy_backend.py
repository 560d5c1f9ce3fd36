"""The cupy backend: the op contract on NVIDIA GPUs.

Matrix products go to cuBLAS as one strided-batched GEMM, transposes passed
as flags, never made as copies; float32 accumulation for every storage type.
Every other op is one fused CUDA kernel from ``backends/cuda/`` (see its
``__init__``), compiled by NVRTC through ``cupy.RawModule`` once per process
and storage type (the float32 kernels at load, float16 / bfloat16 ones on
first use; CuPy also caches the binaries on disk). Attention is flash
attention (``flash_attention.cu``; ``flash_attention_mma.cu`` on tensor
cores for float16 / bfloat16 on sm_80+): memory linear in T, GQA without
copies of k and v, a split-K kernel for one query row against a KV cache.

Storage types: float32, float16, and bfloat16 where ml_dtypes and CuPy >= 14
provide it. An op takes inputs of one dtype and returns that dtype, with
float32 statistics (mean, rstd, lse). ``with_dtype("bfloat16")`` gives the
mixed-precision view (rules in precision.py): the same backend under a
mixed ``casting.CastPolicy``, float32 master weights, half-precision
activations and products. Every float input an op hands a kernel passes
through ``_in`` (or ``_compute``), where the policy casts it.

CuPy is imported lazily, only in ``load_cupy_backend``, so that machines
without it never pay for the import. Inputs may have any layout: a
non-contiguous one is copied once (a transposed matrix goes to cuBLAS as is).
"""

from __future__ import annotations

import math

import numpy as np

from . import _checks as C
from . import cuda as sources
from .base import Backend, BackendUnavailable
from .casting import PLAIN, CastPolicy, bfloat16_dtype, resolve_dtype

_FLAT_THREADS = 256
_WARP_ROWS = 8  # rows per block when each row gets one warp
_SHARED_LIMIT = (
    48 * 1024 - 256
)  # dynamic shared memory a block gets without opt-in, less the static scratch
_NULL = np.uint64(0)  # a null pointer argument
# cudaDataType of each storage dtype, for cuBLAS
_CUDA_R = {"float32": 0, "float16": 2, "bfloat16": 14}


def load_cupy_backend():
    """The cupy backend, or BackendUnavailable saying why it cannot run here."""
    try:
        import cupy
        from cupy.cuda.compiler import CompileException
    except ImportError as e:
        raise BackendUnavailable(
            "the cupy backend needs CuPy: pip install 'ferroformer[cuda12]' (or [cuda13])"
        ) from e
    except Exception as e:  # a broken CuPy install raises more than ImportError
        raise BackendUnavailable(
            f"the cupy backend could not import CuPy: {type(e).__name__}: {e}"
        ) from e
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as e:
        raise BackendUnavailable(f"the cupy backend found no usable CUDA GPU ({e})") from e
    if count < 1:
        raise BackendUnavailable("the cupy backend found no CUDA GPU")
    try:
        return CupyBackend(cupy)
    except CompileException as e:
        raise BackendUnavailable(
            f"the cupy backend's CUDA kernels did not compile on this GPU (a ferroformer bug, "
            f"please report it): {e}"
        ) from e
    except Exception as e:  # NVRTC or cuBLAS not found, a driver too old for the toolkit, ...
        raise BackendUnavailable(
            f"the cupy backend could not start on the GPU: {type(e).__name__}: {e} (where a CUDA "
            f"library is missing: pip install 'cupy-cuda12x[ctk]', or cupy-cuda13x[ctk], or "
            f"install a CUDA toolkit)"
        ) from e


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def row_threads(cols: int) -> int:
    """Threads given to a row of cols values: the power of two (32 to 1024)
    that leaves each thread about eight columns."""
    threads = 32
    while threads < 1024 and threads * 8 < cols:
        threads *= 2
    return threads


def row_launch(rows: int, cols: int):
    """(grid, block) of a row kernel (see common.cuh): a row that one warp
    covers gets one warp, eight rows to a block; a longer row gets a block."""
    threads = row_threads(cols)
    if threads == 32:
        return (_cdiv(rows, _WARP_ROWS),), (32, _WARP_ROWS)
    return (rows,), (threads,)


# -- flash attention launch geometry (backends/cuda/flash_attention*.cu) --------
FLASH_THREADS = 128  # every flash block: 4 warps
SIMT_ROWS = 16  # query (or key) rows of a CUDA-core block: 8 lanes a row
MMA_ROWS = 64  # query rows of a tensor-core forward / dQ block; keys of a dK/dV block


def simt_head_dim(d: int):
    """D_MAX of the CUDA-core kernels for head dim d: the smallest instantiation >= d."""
    return next((m for m in sources.SIMT_HEAD_DIMS if d <= m), None)


def simt_shared_bytes(kernel: str, d_max: int) -> int:
    """Dynamic shared memory of a CUDA-core flash kernel (SimtTiles in the .cu):
    float K and V tiles and a key bias (forward, backward_q), or float Q and dO
    tiles with their lse and delta (backward_kv)."""
    tile = 32 if d_max <= 128 else 16
    if kernel == "backward_kv":
        return (2 * tile * d_max + 2 * tile) * 4
    return (2 * tile * d_max + tile) * 4


def mma_head_dim(d: int):
    """HEAD_DIM of the tensor-core kernels for head dim d (d % 8 == 0, d <= 128), else None."""
    if d % 8:
        return None
    return next((m for m in sources.MMA_HEAD_DIMS if d <= m), None)


def mma_shared_bytes(kernel: str, head_dim: int) -> int:
    """Dynamic shared memory of a tensor-core flash kernel (MmaTiles in the .cu):
    16-bit tiles with rows head_dim + 8 apart, and float row terms."""
    row = (head_dim + 8) * 2
    if kernel == "forward":  # K and V (Q staged in V) tiles of 64 keys, key bias
        return 2 * 64 * row + 64 * 4
    if kernel == "backward_q":  # dO (64 rows), K and V tiles, key bias
        keys = 64 if head_dim <= 64 else 32
        return (64 + 2 * keys) * row + keys * 4
    queries = 64 if head_dim <= 64 else 16  # backward_kv: K, V (64 keys), Q, dO tiles, lse, delta
    return (2 * 64 + 2 * queries) * row + 2 * queries * 4


def decode_split(rows: int, tk: int, sm_count: int):
    """(splits, chunk) of the decode kernels: each of the rows query heads
    gets splits = ceil(tk / chunk) blocks of chunk keys (64 or more, or all
    of them), up to about four blocks per SM in all."""
    if tk == 0:
        return 1, 0
    splits = max(1, min(_cdiv(4 * sm_count, rows), tk // 64))
    chunk = _cdiv(tk, splits)
    return _cdiv(tk, chunk), chunk


class _Kernels:
    """Every kernel of backends/cuda/, compiled on the current device: the
    float32 families at once (a compile error surfaces when the backend
    loads), the others on first use. ``kernels(name, grid, block, *args)``
    launches the kernel called ``name`` (a name expression such as
    ``softmax_forward<__half>``) on CuPy's current stream."""

    def __init__(self, cupy, include_dirs=()):
        self.cupy = cupy
        self.include_dirs = tuple(include_dirs)
        self.functions = {}
        self.where = {}  # name expression -> (family, dtype)
        families = [(f, d) for f in sources.FAMILIES for d in sources.STORAGE_TYPES]
        families += [
            (f, d) for f in sources.TENSOR_CORE_FAMILIES for d in sources.TENSOR_CORE_DTYPES
        ]
        for family, dtype in families:
            for name in sources.name_expressions(family, dtype):
                self.where[name] = (family, dtype)
        for family in sources.FAMILIES:
            self._compile(family, "float32")

    def _compile(self, family, dtype):
        names = sources.name_expressions(family, dtype)
        module = self.cupy.RawModule(
            code=sources.source(family),
            options=sources.options(dtype, self.include_dirs),
            name_expressions=names,
        )
        try:
            module.compile()
        except Exception as e:
            if dtype != "float32" and not self.include_dirs:
                raise RuntimeError(
                    f"the cupy backend's {dtype} kernels need the CUDA half-precision headers "
                    f"(cuda_fp16.h, cuda_bf16.h), found nowhere: pip install "
                    f"nvidia-cuda-runtime-cu12 (or set CUDA_PATH); NVRTC said: {e}"
                ) from e
            raise
        for name in names:
            self.functions[name] = module.get_function(name)

    def __call__(self, name, grid, block, *args, shared_mem=0):
        fn = self.functions.get(name)
        if fn is None:
            self._compile(*self.where[name])
            fn = self.functions[name]
        fn(grid, block, args, shared_mem=shared_mem)


class CupyBackend(Backend):
    name = "cupy"
    policy = PLAIN  # ops compute in the dtype of their inputs; with_dtype's views cast

    def __init__(self, cupy):
        self.base = self
        self.xp = cupy
        self._cublas = cupy.cuda.cublas  # loads cuBLAS: fails here, not in the first op, without it
        cupy.cuda.get_cublas_handle()
        device = cupy.cuda.Device()
        self._sm_count = device.attributes["MultiProcessorCount"]
        self._tensor_cores = int(device.compute_capability) >= sources.TENSOR_CORE_MIN_ARCH
        self._max_flat_blocks = self._sm_count * (2048 // _FLAT_THREADS)
        # cuBLAS reads alpha and beta from host memory; these stay alive with the backend
        self._one = np.ones(1, np.float32)
        self._zero = np.zeros(1, np.float32)
        get_cuda_path = getattr(cupy.cuda, "get_cuda_path", lambda: None)
        self._k = _Kernels(cupy, sources.header_dirs(get_cuda_path()))
        self.float_dtypes = (np.dtype(np.float32), np.dtype(np.float16), *self._bfloat16(cupy))
        self._views = {}
        try:  # what one call's results may take at most: the GPU's memory
            self._device_bytes = int(cupy.cuda.runtime.memGetInfo()[1])
        except Exception:  # an emulated or unusual CuPy: the host's limit
            self._device_bytes = None

    @staticmethod
    def _bfloat16(cupy):
        """(bfloat16,) where ml_dtypes is installed and CuPy can hold it (CuPy >= 14), else ()."""
        dtype = bfloat16_dtype()
        if dtype is None:
            return ()
        try:
            cupy.empty(0, dtype)
        except Exception:
            return ()
        return (dtype,)

    @property
    def compute_dtype(self):
        """The dtype every op computes in, or None: the dtype of its inputs."""
        return self.policy.compute_dtype

    def __repr__(self) -> str:
        if self.compute_dtype is None:
            return super().__repr__()
        return (
            f"<ferroformer backend 'cupy' computing in {self.compute_dtype.name}, "
            f"float32 master weights>"
        )

    def with_dtype(self, dtype):
        """This backend computing in ``dtype`` with float32 master weights
        (a MixedPrecisionBackend, one per dtype); "float32" or None: this backend."""
        base = self.base
        dtype = resolve_dtype(dtype, base)
        if dtype == np.float32:
            return base
        if dtype.name not in base._views:
            base._views[dtype.name] = MixedPrecisionBackend(base, dtype)
        return base._views[dtype.name]

    # -- helpers -----------------------------------------------------------------
    def _c(self, x):
        """x C-contiguous (a copy only where it is not); a 0-d array stays 0-d, where
        NumPy's ascontiguousarray (and so the emulated CuPy of the tests) makes it 1-d."""
        y = self.xp.ascontiguousarray(x)
        return y if y.ndim == x.ndim else y.reshape(x.shape)

    @staticmethod
    def _ctype(x) -> str:
        """The C++ storage type of an array (or a dtype)."""
        return sources.STORAGE_TYPES[np.dtype(getattr(x, "dtype", x)).name]

    def _in(self, x):
        """A float input as the kernels read it: in the policy's compute dtype, C-contiguous."""
        return self._c(self.policy.compute(x))

    def _compute(self, x):
        """A float input in the policy's compute dtype, in its own layout."""
        return self.policy.compute(x)

    def _float(self, op: str, **arrays):
        """The policy's dtype check, with the statistics the backward ops take
        (mean, rstd: float32 whatever the storage type) checked apart."""
        stats = {name: arrays.pop(name) for name in ("mean", "rstd") if name in arrays}
        dtype = self.policy.floats(op, arrays, self.xp.ndarray, self.float_dtypes, self.name)
        for name, x in stats.items():
            C.require_array(op, name, x, self.xp.ndarray)
            if x.dtype != np.float32 and x.dtype != dtype:
                raise TypeError(f"{op}: {name} has dtype {x.dtype}; statistics are float32")
        for name, x in arrays.items():
            if x.size > C.INT32_MAX:
                C.int32_sizes(op, name, x.shape, self.name)
        return dtype

    def _memory_limit(self) -> int:
        return self._device_bytes or super()._memory_limit()

    def _stats(self, x):
        """A statistic (mean, rstd, lse) as the kernels read it: float32, C-contiguous."""
        return self.xp.ascontiguousarray(x, dtype=np.float32)

    def _flat(self, name, n, *args):
        """Launches a flat kernel over n elements (grid-stride loop); args follow its pointers."""
        if n:
            grid = min(_cdiv(n, _FLAT_THREADS), self._max_flat_blocks)
            self._k(name, (grid,), (_FLAT_THREADS,), *args)

    def _rows(self, name, rows, cols, *args):
        """Launches a row kernel over rows of cols values."""
        if rows:
            grid, block = row_launch(rows, cols)
            self._k(name, grid, block, *args)

    # -- matrix products ---------------------------------------------------------
    def _operand(self, x, trans, batch):
        """x (..., r, c) as cuBLAS wants it: C-contiguous matrices a constant
        stride apart (0: one matrix for the whole batch). A transposed view is
        taken as its C-contiguous transpose with the flag flipped, not copied."""
        xp = self.xp
        if not x.flags.c_contiguous and xp.swapaxes(x, -1, -2).flags.c_contiguous:
            x, trans = xp.swapaxes(x, -1, -2), not trans
        rows, cols = x.shape[-2:]
        count = math.prod(x.shape[:-2])
        if count == 1:
            return self._c(x.reshape(rows, cols)), trans, 0
        if count != math.prod(batch):  # a partly broadcast batch: made whole, once
            x = xp.broadcast_to(x, (*batch, rows, cols))
        return self._c(x), trans, rows * cols

    def _gemm(self, a, b, trans_a, trans_b, out_dtype=None):
        """op(a) @ op(b) for a (..., m, k), b (..., k, n) of one dtype (op swaps
        the last two axes when its flag is set), batch dims broadcast: one
        cuBLAS strided-batched GEMM with float32 accumulation (pure float32 for
        float32 inputs: no TF32; tensor cores for float16 / bfloat16). The
        result has a's dtype, or out_dtype (float32 from half inputs)."""
        xp, cublas = self.xp, self._cublas
        batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        m = a.shape[-1] if trans_a else a.shape[-2]
        k = a.shape[-2] if trans_a else a.shape[-1]
        n = b.shape[-2] if trans_b else b.shape[-1]
        out = xp.empty((*batch, m, n), a.dtype if out_dtype is None else out_dtype)
        if out.size == 0:
            return out
        if k == 0:
            out.fill(0)
            return out
        a, trans_a, stride_a = self._operand(a, trans_a, batch)
        b, trans_b, stride_b = self._operand(b, trans_b, batch)
        # cuBLAS is column-major: a row-major (r, c) matrix is its (c, r) transpose
        # there, so row-major out = op(a) op(b) is column-major out^T = op(b)^T op(a)^T.
        op = {False: cublas.CUBLAS_OP_N, True: cublas.CUBLAS_OP_T}
        cublas.gemmStridedBatchedEx(
            xp.cuda.get_cublas_handle(),
            op[trans_b],
            op[trans_a],
            n,
            m,
            k,
            self._one.ctypes.data,
            b.data.ptr,
            _CUDA_R[b.dtype.name],
            b.shape[-1],
            stride_b,
            a.data.ptr,
            _CUDA_R[a.dtype.name],
            a.shape[-1],
            stride_a,
            self._zero.ctypes.data,
            out.data.ptr,
            _CUDA_R[out.dtype.name],
            n,
            m * n,
            math.prod(batch),
            cublas.CUBLAS_COMPUTE_32F,
            cublas.CUBLAS_GEMM_DEFAULT,
        )
        return out

    def _matmul(self, a, b, trans_a, trans_b):
        return self._gemm(self._compute(a), self._compute(b), trans_a, trans_b)

    @staticmethod
    def _matrix(x):
        """(..., c) → (rows, c)."""
        return x.reshape(math.prod(x.shape[:-1]), x.shape[-1])

    def _linear_forward(self, x, w, b):
        x, w = self._compute(x), self._compute(w)
        y = self._gemm(self._matrix(x), w, False, True)
        if b is not None:
            y += b
        return y.reshape((*x.shape[:-1], w.shape[0]))

    def _quantized_linear_forward(self, x, qweight, qtype, bias, int8):
        """The blocks decode on the host a slab of rows at a time (a device qweight is
        brought over slab by slab); each slab is multiplied on the device by cuBLAS
        (x rounded on the device first in the int8 mode)."""
        from ..quant.formats import dequantize
        from ..quant.reference import _SLAB_VALUES, int8_activations

        xp = self.xp
        if int8:
            x = int8_activations(x, xp)
        out_f, in_f = qweight.shape[0], x.shape[1]
        y = xp.empty((x.shape[0], out_f), x.dtype)
        rows = max(1, _SLAB_VALUES // max(in_f, 1))
        for r in range(0, out_f, rows):
            slab = qweight[r : r + rows]
            if not isinstance(slab, np.ndarray):
                slab = slab.get()
            w = xp.asarray(dequantize(np.ascontiguousarray(slab), qtype).astype(x.dtype))
            y[:, r : r + w.shape[0]] = self._gemm(x, w, False, True)
        if bias is not None:
            y += bias
        return y

    def _linear_backward(self, dy, x, w, has_bias):
        """(dx, dw, db); dw and db in w's dtype (a float32 master weight's under mixed precision)."""
        grad_dtype = w.dtype
        dy, x, w = self._compute(dy), self._compute(x), self._compute(w)
        dy2, x2 = self._matrix(dy), self._matrix(x)
        dx = self._gemm(dy2, w, False, False).reshape(x.shape)
        dw = self._gemm(dy2, x2, True, False, grad_dtype)
        return dx, dw, self._column_sums(dy2, grad_dtype) if has_bias else None

    def _column_sums(self, x, out_dtype):
        """x (rows, c) summed over rows, as ones (1, rows) @ x: cuBLAS adds in
        float32 (and in a fixed order) whatever x's storage type."""
        ones = self.xp.ones((1, x.shape[0]), x.dtype)
        return self._gemm(ones, x, False, False, out_dtype).reshape(x.shape[1])

    # -- softmax -------------------------------------------------------------------
    def _softmax_rows(self, x, y, lse, mask, tq, rows_per_batch, scale, causal):
        """softmax_forward on x (rows, C) viewed as (..., Tq, C), into y (may be x)."""
        cols = x.shape[-1]
        rows = x.size // cols if cols else 0
        self._rows(
            f"softmax_forward<{self._ctype(x)}>",
            rows,
            cols,
            x,
            y,
            _NULL if lse is None else lse,
            _NULL if mask is None else mask,
            np.int64(rows),
            np.int32(cols),
            np.int32(tq),
            np.int64(rows_per_batch),
            np.float32(scale),
            np.int32(causal),
        )

    def _softmax_forward(self, x, scale, causal):
        x = self._in(x)
        y = self.xp.empty_like(x)
        tq = x.shape[-2] if causal else 1
        self._softmax_rows(x, y, None, None, tq, 1, scale, causal)
        return y

    def _softmax_backward(self, dy, y, scale):
        dy, y = self._in(dy), self._in(y)
        dx = self.xp.empty_like(y)
        cols = y.shape[-1]
        rows = y.size // cols if cols else 0
        self._rows(
            f"softmax_backward<{self._ctype(y)}>",
            rows,
            cols,
            dy,
            y,
            dx,
            np.int64(rows),
            np.int32(cols),
            np.float32(scale),
        )
        return dx

    # -- normalisation -------------------------------------------------------------
    def _norm_forward(self, x, gamma, beta, eps, centered):
        xp = self.xp
        x, gamma = self._in(x), self._in(gamma)
        cols = x.shape[-1]
        rows = x.size // cols if cols else math.prod(x.shape[:-1])
        y = xp.empty_like(x)
        mean = xp.empty(x.shape[:-1], np.float32) if centered else None
        rstd = xp.empty(x.shape[:-1], np.float32)
        kernel = f"norm_forward<{self._ctype(x)}, {'true' if centered else 'false'}>"
        self._rows(
            kernel,
            rows,
            cols,
            x,
            gamma,
            self._in(beta) if centered else _NULL,
            y,
            mean if centered else _NULL,
            rstd,
            np.int64(rows),
            np.int32(cols),
            np.float32(eps),
        )
        return y, mean, rstd

    def _norm_backward(self, dy, x, gamma, mean, rstd, centered):
        """(dx, dgamma, dbeta): per-block partial sums of dgamma / dbeta (float),
        then column_sum adds the blocks in a fixed order (deterministic) into
        gamma's dtype (a float32 master weight's under mixed precision)."""
        xp = self.xp
        grad_dtype = gamma.dtype
        dy, x, gamma = self._in(dy), self._in(x), self._in(gamma)
        cols = x.shape[-1]
        rows = x.size // cols if cols else 0
        dx = xp.empty_like(x)
        if rows == 0:
            zeros = xp.zeros(cols, grad_dtype)
            return dx, zeros, zeros.copy()
        threads = row_threads(cols)  # one block (not warp) per chunk of rows
        blocks_per_sm = 2048 // threads
        rows_per_block = _cdiv(rows, min(rows, self._sm_count * blocks_per_sm))
        blocks = _cdiv(rows, rows_per_block)
        partial = xp.empty((blocks, 2 * cols), np.float32)
        shared_bytes = 2 * cols * 4
        in_shared = shared_bytes <= _SHARED_LIMIT
        kernel = f"norm_backward<{self._ctype(x)}, {'true' if centered else 'false'}>"
        self._k(
            kernel,
            (blocks,),
            (threads,),
            dy,
            x,
            gamma,
            self._stats(mean) if centered else _NULL,
            self._stats(rstd),
            dx,
            partial,
            np.int64(rows),
            np.int32(cols),
            np.int64(rows_per_block),
            np.int32(in_shared),
            shared_mem=shared_bytes if in_shared else 0,
        )
        sums = xp.empty(2 * cols, grad_dtype)
        self._flat(
            f"column_sum<{self._ctype(grad_dtype)}>",
            2 * cols,
            partial,
            sums,
            np.int32(blocks),
            np.int64(2 * cols),
        )
        return dx, sums[:cols], sums[cols:]

    def _layernorm_forward(self, x, gamma, beta, eps):
        return self._norm_forward(x, gamma, beta, eps, True)

    def _layernorm_backward(self, dy, x, gamma, mean, rstd):
        return self._norm_backward(dy, x, gamma, mean, rstd, True)

    def _rmsnorm_forward(self, x, gamma, eps):
        y, _, rstd = self._norm_forward(x, gamma, None, eps, False)
        return y, rstd

    def _rmsnorm_backward(self, dy, x, gamma, rstd):
        dx, dgamma, _ = self._norm_backward(dy, x, gamma, None, rstd, False)
        return dx, dgamma

    # -- activations -------------------------------------------------------------------
    def _act_forward(self, act, x):
        x = self._in(x)
        y = self.xp.empty_like(x)
        self._flat(
            f"activation_forward<{self._ctype(x)}, {sources.ACTIVATIONS[act]}>",
            x.size,
            x,
            y,
            np.int64(x.size),
        )
        return y

    def _act_backward(self, act, dy, x):
        dy, x = self._in(dy), self._in(x)
        dx = self.xp.empty_like(x)
        self._flat(
            f"activation_backward<{self._ctype(x)}, {sources.ACTIVATIONS[act]}>",
            x.size,
            dy,
            x,
            dx,
            np.int64(x.size),
        )
        return dx

    @staticmethod
    def _gelu_name(approximate):
        return "gelu_tanh" if approximate == "tanh" else "gelu_erf"

    def _gelu_forward(self, x, approximate):
        return self._act_forward(self._gelu_name(approximate), x)

    def _gelu_backward(self, dy, x, approximate):
        return self._act_backward(self._gelu_name(approximate), dy, x)

    def _relu_forward(self, x):
        return self._act_forward("relu", x)

    def _relu_backward(self, dy, x):
        return self._act_backward("relu", dy, x)

    def _silu_forward(self, x):
        return self._act_forward("silu", x)

    def _silu_backward(self, dy, x):
        return self._act_backward("silu", dy, x)

    def _swiglu_forward(self, gate, up):
        gate, up = self._in(gate), self._in(up)
        h = self.xp.empty_like(gate)
        self._flat(
            f"swiglu_forward<{self._ctype(gate)}>", gate.size, gate, up, h, np.int64(gate.size)
        )
        return h

    def _swiglu_backward(self, dh, gate, up):
        dh, gate, up = self._in(dh), self._in(gate), self._in(up)
        dgate, dup = self.xp.empty_like(gate), self.xp.empty_like(up)
        self._flat(
            f"swiglu_backward<{self._ctype(gate)}>",
            gate.size,
            dh,
            gate,
            up,
            dgate,
            dup,
            np.int64(gate.size),
        )
        return dgate, dup

    # -- attention -------------------------------------------------------------------
    # Flash attention (backends/cuda/flash_attention*.cu): o and lse from one
    # pass over the keys, the backward recomputes P from lse; no (Tq, Tk)
    # buffer. One query row (decode) goes to the split-K kernels. Head dims
    # past 256 (and 0) take the composed path below, which materialises the scores.
    def _flash_kernels(self, dtype, d):
        """ "mma" (tensor cores), "simt" (CUDA cores) or None (composed) for head dim d."""
        if not 0 < d <= sources.SIMT_HEAD_DIMS[-1]:
            return None
        if self._tensor_cores and dtype.name in sources.TENSOR_CORE_DTYPES and mma_head_dim(d):
            return "mma"
        return "simt"

    def _flash_inputs(self, kind, *xs):
        """C-contiguous; 16-byte aligned for the tensor-core kernels' cp.async."""
        xs = [self._c(x) for x in xs]
        if kind == "mma":
            xs = [x if x.data.ptr % 16 == 0 else x.copy() for x in xs]
        return xs

    def _attention_forward(self, q, k, v, causal, scale, mask):
        q, k, v = self._compute(q), self._compute(k), self._compute(v)
        b, hq, tq, d = q.shape
        hkv, tk = k.shape[1], k.shape[2]
        kind = self._flash_kernels(q.dtype, d)
        if kind is None:
            return self._attention_forward_composed(q, k, v, causal, scale, mask)
        mask = _NULL if mask is None else self._c(mask)
        if tq == 1:
            return self._attention_decode(self._c(q), self._c(k), self._c(v), mask, scale, tk)
        q, k, v = self._flash_inputs(kind, q, k, v)
        o = self.xp.empty_like(q)
        lse = self.xp.empty((b, hq, tq), np.float32)
        if o.size == 0:
            return o, lse
        dim, rows_per_block, shared = self._flash_geometry(kind, d)
        self._k(
            f"attention_forward_{kind}<{self._ctype(q)}, {dim}>",
            (_cdiv(tq, rows_per_block) * b * hq,),
            (FLASH_THREADS,),
            q,
            k,
            v,
            mask,
            o,
            lse,
            *self._flash_scalars(hq, hkv, tq, tk, d, scale, causal),
            shared_mem=shared("forward", dim),
        )
        return o, lse

    @staticmethod
    def _flash_geometry(kind, d):
        """(the kernels' head-dim instance, rows of a block, shared-memory function)
        of the tensor-core ("mma") or CUDA-core ("simt") flash kernels for head dim d."""
        if kind == "mma":
            return mma_head_dim(d), MMA_ROWS, mma_shared_bytes
        return simt_head_dim(d), SIMT_ROWS, simt_shared_bytes

    @staticmethod
    def _flash_scalars(hq, hkv, tq, tk, d, scale, causal):
        i = np.int32
        return i(hq), i(hkv), i(tq), i(tk), i(d), np.float32(scale), i(causal)

    def _attention_forward_cached(self, q, k, v, causal, scale, mask, kv_len):
        """One query row (decode) against C-contiguous cache buffers of its dtype
        reads them in place: the split-K kernel takes the first kv_len of each
        head's k.shape[2] rows. Anything else attends to the used slices, copied."""
        q = self._compute(q)
        tq, d = q.shape[2:]
        if (
            tq == 1
            and self._flash_kernels(q.dtype, d) is not None
            and k.dtype == v.dtype == q.dtype
            and k.flags.c_contiguous
            and v.flags.c_contiguous
            and (mask is None or mask.flags.c_contiguous)
        ):
            return self._attention_decode(
                self._c(q), k, v, _NULL if mask is None else mask, scale, kv_len
            )
        return super()._attention_forward_cached(q, k, v, causal, scale, mask, kv_len)

    def _attention_decode(self, q, k, v, mask, scale, tk):
        """(o, lse) of q (B, Hq, 1, D) against keys [0, tk) of k, v (B, Hkv, Tcap, D),
        C-contiguous (mask (B, Tcap) too): each query head's keys split into chunks,
        one block each, then merged per row in chunk order (the bottom-right causal
        mask shows one query row every key)."""
        b, hq, _, d = q.shape
        hkv = k.shape[1]
        o = self.xp.empty_like(q)
        lse = self.xp.empty((b, hq, 1), np.float32)
        if o.size == 0:
            return o, lse
        rows, d_max = b * hq, simt_head_dim(d)
        splits, chunk = decode_split(rows, tk, self._sm_count)
        partial = self.xp.empty((splits, rows, d_max + 2), np.float32)
        i = np.int32
        self._k(
            f"attention_decode_partial<{self._ctype(q)}, {d_max}>",
            (splits * rows,),
            (FLASH_THREADS,),
            q,
            k,
            v,
            mask,
            partial,
            i(hq),
            i(hkv),
            i(tk),
            i(k.shape[2]),
            i(d),
            np.float32(scale),
            i(chunk),
            i(splits),
        )
        self._rows(
            f"attention_decode_merge<{self._ctype(q)}>",
            rows,
            d,
            partial,
            o,
            lse,
            np.int64(rows),
            i(d),
            i(d_max + 2),
            i(splits),
        )
        return o, lse

    def _attention_backward(self, do, q, k, v, o, lse, causal, scale, mask):
        xp = self.xp
        do, q, k, v, o = (self._compute(x) for x in (do, q, k, v, o))
        b, hq, tq, d = q.shape
        hkv, tk = k.shape[1], k.shape[2]
        kind = self._flash_kernels(q.dtype, d)
        if kind is None:
            return self._attention_backward_composed(do, q, k, v, o, lse, causal, scale, mask)
        q, k, v, do, o = self._flash_inputs(kind, q, k, v, do, o)
        lse = self._stats(lse)
        mask = _NULL if mask is None else self._c(mask)
        dq, dk, dv = xp.empty_like(q), xp.empty_like(k), xp.empty_like(v)
        rows = b * hq * tq
        delta = xp.empty((b, hq, tq), np.float32)
        self._rows(
            f"attention_backward_delta<{self._ctype(q)}>",
            rows,
            d,
            do,
            o,
            delta,
            np.int64(rows),
            np.int32(d),
        )
        scalars = self._flash_scalars(hq, hkv, tq, tk, d, scale, causal)
        inputs = (q, k, v, do, lse, delta, mask)
        dim, rows_per_block, shared = self._flash_geometry(kind, d)
        name = f"<{self._ctype(q)}, {dim}>"
        kv_blocks = _cdiv(tk, rows_per_block) * b * hkv
        q_blocks = _cdiv(tq, rows_per_block) * b * hq
        kv_shared, q_shared = shared("backward_kv", dim), shared("backward_q", dim)
        if kv_blocks:
            self._k(
                f"attention_backward_kv_{kind}{name}",
                (kv_blocks,),
                (FLASH_THREADS,),
                *inputs,
                dk,
                dv,
                *scalars,
                shared_mem=kv_shared,
            )
        if q_blocks:
            self._k(
                f"attention_backward_q_{kind}{name}",
                (q_blocks,),
                (FLASH_THREADS,),
                *inputs,
                dq,
                *scalars,
                shared_mem=q_shared,
            )
        return dq, dk, dv

    # The composed twin, for head dims past 256: GEMMs and the softmax kernels
    # on a grouped layout. Query heads sharing a key/value head are laid side by
    # side: q (B, Hq, Tq, D) is read as (B, Hkv, G * Tq, D), G = Hq / Hkv (a
    # free reshape), so every score matrix is one batched GEMM against k and v
    # as they are, and row r of a group is query r % Tq.
    @staticmethod
    def _grouped(x, hkv):
        b, hq, t, d = x.shape
        return x.reshape(b, hkv, (hq // hkv) * t, d)

    def _attention_forward_composed(self, q, k, v, causal, scale, mask):
        xp = self.xp
        b, hq, tq, d = q.shape
        hkv = k.shape[1]
        qg = self._grouped(self._c(q), hkv)
        s = self._gemm(qg, k, False, True)  # (B, Hkv, G*Tq, Tk)
        lse = xp.empty((b, hq, tq), np.float32)
        if k.shape[2] == 0:
            lse.fill(-np.inf)
        self._softmax_rows(
            s, s, lse, None if mask is None else self._c(mask), tq, hq * tq, scale, causal
        )
        o = self._gemm(s, v, False, False)
        return o.reshape(b, hq, tq, d), lse

    def _attention_backward_composed(self, do, q, k, v, o, lse, causal, scale, mask):
        b, hq, tq, d = q.shape
        hkv, tk = k.shape[1], k.shape[2]
        qg = self._grouped(self._c(q), hkv)
        dog = self._grouped(self._c(do), hkv)
        s = self._gemm(qg, k, False, True)  # scores, then p
        dp = self._gemm(dog, v, False, True)  # do . v, then ds
        rows = b * hq * tq
        self._rows(
            f"attention_backward_scores<{self._ctype(q)}>",
            rows,
            tk,
            s,
            dp,
            dog,
            self._c(o),
            self._stats(lse),
            _NULL if mask is None else self._c(mask),
            np.int64(rows),
            np.int32(tk),
            np.int32(tq),
            np.int64(hq * tq),
            np.int32(d),
            np.float32(scale),
            np.int32(causal),
        )
        dq = self._gemm(dp, k, False, False).reshape(b, hq, tq, d)
        dk = self._gemm(dp, qg, True, False)  # sums the group's query heads
        dv = self._gemm(s, dog, True, False)
        return dq, dk, dv

    # -- loss --------------------------------------------------------------------------
    def _cross_entropy_forward(self, logits, targets, ignore_index, label_smoothing):
        xp = self.xp
        logits, targets = self._in(logits), self._c(targets)
        n, vocab = logits.shape
        lse = xp.empty(n, np.float32)
        loss_rows = xp.empty(n, np.float32)
        self._rows(
            f"cross_entropy_forward<{self._ctype(logits)}>",
            n,
            vocab,
            logits,
            targets,
            lse,
            loss_rows,
            np.int64(n),
            np.int32(vocab),
            np.int64(ignore_index),
            np.float32(label_smoothing),
        )
        counted = targets != ignore_index
        total, count = xp.stack(
            [loss_rows.sum(dtype=np.float64), counted.sum(dtype=np.float64)]
        ).get()
        return (0.0 if count == 0 else float(total / count)), lse

    def _cross_entropy_backward(self, logits, targets, lse, ignore_index, label_smoothing, grad):
        xp = self.xp
        logits, targets = self._in(logits), self._c(targets)
        n, vocab = logits.shape
        count = int(xp.count_nonzero(targets != ignore_index))
        dlogits = xp.empty_like(logits)
        self._rows(
            f"cross_entropy_backward<{self._ctype(logits)}>",
            n,
            vocab,
            logits,
            targets,
            xp.ascontiguousarray(xp.asarray(lse), dtype=np.float32),
            dlogits,
            np.int64(n),
            np.int32(vocab),
            np.int64(ignore_index),
            np.float32(label_smoothing / vocab),
            np.float32(1.0 - label_smoothing),
            np.float32(grad / max(count, 1)),
        )
        return dlogits

    # -- embedding -----------------------------------------------------------------------
    def _embedding_forward(self, weight, ids):
        weight, ids = self._c(weight), self._c(ids)
        cols = weight.shape[1]
        out = self.xp.empty((*ids.shape, cols), weight.dtype)
        if out.size:  # (not: no rows, or rows of nothing, C = 0)
            self._rows(
                f"embedding_forward<{self._ctype(weight)}>",
                ids.size,
                cols,
                weight,
                ids,
                out,
                np.int64(ids.size),
                np.int32(cols),
            )
        return self._compute(out)  # (the rows are gathered in the table's dtype, then cast)

    def _embedding_backward(self, dy, ids, num_embeddings):
        xp = self.xp
        dy = self.policy.master(dy)  # the table it is the gradient of is not an argument
        if num_embeddings > C.INT32_MAX:  # one block per row of dweight
            C.int32_sizes(
                "embedding_backward", "dweight", (num_embeddings, dy.shape[-1]), self.name
            )
        cols = dy.shape[-1]
        flat = self._c(ids).reshape(-1)
        n = flat.size
        if n == 0 or cols == 0:
            return xp.zeros((num_embeddings, cols), dy.dtype)
        # (id, position) pairs as one int64 key each: sorting the keys orders the
        # positions by id and, within an id, ascending, whatever the sort's stability
        order = xp.sort(flat * n + xp.arange(n, dtype=np.int64)) % n
        offsets = xp.zeros(num_embeddings + 1, np.int64)
        offsets[1:] = xp.cumsum(xp.bincount(flat, minlength=num_embeddings))
        dweight = xp.empty((num_embeddings, cols), dy.dtype)
        self._rows(
            f"embedding_backward<{self._ctype(dy)}>",
            num_embeddings,
            cols,
            self._c(dy),
            order,
            offsets,
            dweight,
            np.int64(num_embeddings),
            np.int32(cols),
        )
        return dweight

    # -- rotary positions ------------------------------------------------------------------
    def _rope(self, x, cos, sin, sin_sign):
        x = self._in(x)
        out = self.xp.empty_like(x)
        half = x.shape[-1] // 2
        self._flat(
            f"rope<{self._ctype(x)}>",
            x.size // 2,
            x,
            self._in(cos),
            self._in(sin),
            out,
            np.int64(x.size // 2),
            np.int32(x.shape[-2]),
            np.int32(half),
            np.float32(sin_sign),
        )
        return out

    def _rope_forward(self, x, cos, sin):
        return self._rope(x, cos, sin, 1.0)

    def _rope_backward(self, dy, cos, sin):
        return self._rope(dy, cos, sin, -1.0)

    # -- optimiser ---------------------------------------------------------------------------
    def _adamw_step(self, param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
        # (under mixed precision a half grad updates a float32 param: cast up; the
        # contract has checked that m and v have param's dtype)
        grad = self._c(grad.astype(param.dtype, copy=False))
        f = np.float32
        self._flat(
            f"adamw_step<{self._ctype(param)}>",
            param.size,
            param,
            grad,
            m,
            v,
            np.int64(param.size),
            f(lr),
            f(beta1),
            f(1.0 - beta1),
            f(beta2),
            f(1.0 - beta2),
            f(eps),
            f(1.0 - lr * weight_decay),
            f(1.0 - beta1**step),
            f(1.0 - beta2**step),
        )


class MixedPrecisionBackend(CupyBackend):
    """The cupy backend computing in ``dtype`` (float16 or bfloat16) with float32
    master weights: ``base`` under a mixed ``CastPolicy`` (the rules are in
    precision.py), nothing overridden. Made by ``CupyBackend.with_dtype``; it
    shares its base's compiled kernels, cuBLAS state and views."""

    _SHARED = (
        "xp",
        "_cublas",
        "_sm_count",
        "_tensor_cores",
        "_max_flat_blocks",
        "_one",
        "_zero",
        "_k",
        "_views",
        "_device_bytes",
    )

    def __init__(self, base: CupyBackend, dtype):
        for name in self._SHARED:
            setattr(self, name, getattr(base, name))
        self.base = base
        self.policy = CastPolicy(dtype)
        self.float_dtypes = (np.dtype(np.float32), self.policy.compute_dtype)
