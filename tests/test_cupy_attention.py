"""Flash attention on the cupy backend (backends/cuda/flash_attention.cu, the
CUDA-core kernels, and flash_attention_mma.cu, the tensor-core ones).

Without a GPU:
  - the kernels' own CUDA C++ runs on the host (cuda_host.py, through the
    emulator and the real CupyBackend): forward, backward and decode against
    the float64 NumPy reference over causal / padding / GQA / MQA / Tq != Tk /
    odd head dims, in float32, float16 and bfloat16, on an emulated sm_90
    (tensor cores for the half types) and sm_75 (CUDA cores), in both thread
    orders; and the harness itself catches the mistakes it claims to;
  - NVRTC compiles both families for sm_80 / sm_90 (and the CUDA-core one
    for sm_75) in every storage type, without warnings or register spills;
  - the launch geometry: tiles, shared memory, decode splits.
On a GPU (skipped elsewhere): the same comparisons (float32 within 1e-4,
bfloat16 within 1e-2 relative), tensor cores against CUDA cores, memory
linear in T, bit-identical repeated backward passes, and decode against the
full forward.

    python -m pytest tests/test_cupy_attention.py -s -k compile   # prints register counts
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from devices import OnDevice

from ferroformer.backends import cuda
from ferroformer.backends.cupy_backend import (
    bfloat16_dtype,
    decode_split,
    mma_head_dim,
    mma_shared_bytes,
    simt_head_dim,
    simt_shared_bytes,
)
from ferroformer.backends.numpy_backend import NumpyBackend

import cuda_emulator
import cuda_host
from helpers import assert_close, attention_cases

BF16 = bfloat16_dtype()
DTYPES = ["float32", "float16"] + (["bfloat16"] if BF16 is not None else [])
TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 1e-2}  # relative to the largest value
HOST = cuda_host.unavailable()

CASES = [
    # B, Hq, Hkv, Tq, Tk, D
    (1, 1, 1, 1, 1, 16),
    (2, 4, 2, 37, 45, 40),  # GQA, partial tiles, a head dim that is no power of two
    (1, 2, 1, 70, 70, 64),
    (2, 2, 2, 100, 33, 64),  # Tq > Tk: causal rows that see no key
    (1, 1, 1, 65, 130, 128),  # Tq < Tk, several key tiles
    (1, 2, 1, 33, 50, 256),  # CUDA cores only (D > 128)
    (1, 3, 1, 17, 17, 16),  # MQA
    (2, 2, 2, 1, 300, 96),  # one query row: the split-K decode path
]


def dtype_of(name):
    return BF16 if name == "bfloat16" else np.dtype(name)


def make_inputs(rng, case, masked):
    b, hq, hkv, tq, tk, d = case
    q, do = (rng.standard_normal((b, hq, tq, d)) for _ in range(2))
    k, v = (rng.standard_normal((b, hkv, tk, d)) for _ in range(2))
    mask = None
    if masked:
        mask = rng.random((b, tk)) < 0.3
        if b > 1:
            mask[0] = True  # one sequence with every key masked
    return q, k, v, do, mask


def check_attention(ops, case, dtype_name, causal, masked, rng):
    """Forward and backward of ops (NumPy arrays in and out) against the
    float64 reference run on the same (rounded) inputs."""
    ref = NumpyBackend()
    dtype = dtype_of(dtype_name)
    q, k, v, do, mask = make_inputs(rng, case, masked)
    q, k, v, do = (x.astype(dtype).astype(np.float64) for x in (q, k, v, do))
    kw = dict(causal=causal, key_padding_mask=mask)
    o, lse = ops.attention_forward(*(x.astype(dtype) for x in (q, k, v)), **kw)
    o_ref, lse_ref = ref.attention_forward(q, k, v, **kw)
    tol = TOLERANCE[dtype_name]
    assert o.dtype == dtype and lse.dtype == np.float32
    assert_close(o, o_ref, rtol=tol, atol=tol * np.abs(o_ref).max(initial=1.0), name="o")
    assert_close(lse, lse_ref, rtol=tol, atol=tol, name="lse")
    # the backward from the reference's o and lse, so that it is checked on its own
    grads = ops.attention_backward(
        *(x.astype(dtype) for x in (do, q, k, v, o_ref)), lse_ref.astype(np.float32), **kw
    )
    grads_ref = ref.attention_backward(do, q, k, v, o_ref, lse_ref, **kw)
    for name, g, want in zip(("dq", "dk", "dv"), grads, grads_ref):
        assert g.dtype == dtype
        assert_close(g, want, rtol=tol, atol=tol * np.abs(want).max(initial=1.0), name=name)
    if masked and case[0] > 1:  # the fully masked sequence: o = 0, lse = -inf, zero gradients
        assert not o[0].any() and np.isneginf(lse[0]).all()
        assert not any(g[0].any() for g in grads)


# -- the kernels' CUDA C++ on the host ------------------------------------------------------


@pytest.fixture
def launches(monkeypatch):
    """The name expressions of every kernel the emulated backend launches."""
    names = []
    call = cuda_emulator.Kernel.__call__

    def record(kernel, *args, **kwargs):
        names.append(kernel.expression)
        return call(kernel, *args, **kwargs)

    monkeypatch.setattr(cuda_emulator.Kernel, "__call__", record)
    return names


def expected_kernels(case, dtype_name, tensor_cores):
    """The flash kernels the backend should pick (forward, then backward)."""
    d, tq = case[5], case[3]
    ctype = cuda.STORAGE_TYPES[dtype_name]
    if tensor_cores and dtype_name != "float32" and mma_head_dim(d):
        kind, dim = "mma", mma_head_dim(d)
    else:
        kind, dim = "simt", simt_head_dim(d)
    forward = (
        f"attention_decode_partial<{ctype}, {simt_head_dim(d)}>"
        if tq == 1
        else f"attention_forward_{kind}<{ctype}, {dim}>"
    )
    return [
        forward,
        f"attention_backward_kv_{kind}<{ctype}, {dim}>",
        f"attention_backward_q_{kind}<{ctype}, {dim}>",
    ]


@pytest.mark.skipif(HOST is not None, reason=str(HOST))
@attention_cases(CASES)
@pytest.mark.parametrize(
    "dtype_name,device",
    [(d, cc) for d in DTYPES for cc in ("90", "75") if d != "float32" or cc == "90"],
)
def test_kernels_on_host_match_reference(case, causal, masked, dtype_name, device, launches, rng):
    ops = OnDevice(cuda_emulator.backend(device))
    check_attention(ops, case, dtype_name, causal, masked, rng)
    for name in expected_kernels(case, dtype_name, device == "90"):
        assert name in launches, f"{name} did not run (ran: {sorted(set(launches))})"


@pytest.mark.skipif(HOST is not None, reason=str(HOST))
@pytest.mark.parametrize("dtype_name", DTYPES)
def test_kernels_on_host_in_reverse_thread_order(monkeypatch, dtype_name, rng):
    """Threads run until they block: the other order exposes other missing barriers."""
    monkeypatch.setattr(cuda_emulator, "HOST_ORDER", 1)
    ops = OnDevice(cuda_emulator.backend("90"))
    for case in ((2, 4, 2, 37, 45, 40), (1, 2, 2, 100, 133, 128), (2, 2, 1, 1, 200, 64)):
        check_attention(ops, case, dtype_name, True, True, rng)


@pytest.mark.skipif(HOST is not None, reason=str(HOST))
def test_strided_and_misaligned_inputs(rng):
    """Views (transposed heads, an offset that breaks 16-byte alignment) reach
    the tensor-core kernels as aligned contiguous copies."""
    ops = cuda_emulator.backend("90")
    xp, ref = ops.xp, NumpyBackend()
    dtype = np.dtype(np.float16)
    q = rng.standard_normal((1, 40, 2, 64)).astype(dtype)  # (B, T, H, D): heads are a view
    flat = np.empty(2 * 40 * 64 + 1, dtype)  # k one element off alignment
    k = flat[1:].reshape(1, 2, 40, 64)
    k[...] = rng.standard_normal(k.shape)
    dq = xp.asarray(q).transpose(0, 2, 1, 3)
    dk = cuda_emulator._wrap(k)
    assert dk.ctypes.data % 16
    o, lse = ops.attention_forward(dq, dk, dk, causal=True)
    q64, k64 = q.transpose(0, 2, 1, 3).astype(np.float64), k.astype(np.float64)
    o_ref, lse_ref = ref.attention_forward(q64, k64, k64, causal=True)
    assert_close(o, o_ref, rtol=1e-2, atol=1e-2)
    grads = ops.attention_backward(dk, dq, dk, dk, o, lse, causal=True)  # dO misaligned too
    for g, want in zip(
        grads, ref.attention_backward(k64, q64, k64, k64, o_ref, lse_ref, causal=True)
    ):
        assert_close(g, want, rtol=1e-2, atol=1e-2 * np.abs(want).max())


@pytest.mark.skipif(HOST is not None, reason=str(HOST))
@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("masked", [False, True])
def test_decode_reads_the_kv_cache_in_place(monkeypatch, dtype_name, masked, rng):
    """attention_forward(.., kv_len=) with one query row hands the kernel the
    cache buffers themselves: no copy of k, v or the mask (there were two of
    (1, 3, kv_len, 64) per call), the unused rows (NaN here) never read, and
    the result that of the used slices on the NumPy reference."""
    ops, ref, dtype = cuda_emulator.backend("90"), NumpyBackend(), dtype_of(dtype_name)
    copies = []
    contiguous = ops.xp.ascontiguousarray

    def counting(x, *args, **kwargs):
        if not x.flags.c_contiguous:
            copies.append(x.shape)
        return contiguous(x, *args, **kwargs)

    monkeypatch.setattr(ops.xp, "ascontiguousarray", counting)
    capacity, kv_len = 160, 97
    k, v = (np.full((1, 3, capacity, 64), np.nan) for _ in range(2))
    k[:, :, :kv_len], v[:, :, :kv_len] = (rng.standard_normal((1, 3, kv_len, 64)) for _ in range(2))
    q = rng.standard_normal((1, 6, 1, 64))  # GQA: two query heads a key head
    mask = (rng.random((1, capacity)) < 0.3) if masked else None
    q, k, v = (x.astype(dtype) for x in (q, k, v))
    on = ops.xp.asarray
    o, lse = ops.attention_forward(
        on(q),
        on(k),
        on(v),
        causal=True,
        key_padding_mask=None if mask is None else on(mask),
        kv_len=kv_len,
    )
    assert copies == []
    used = (x[:, :, :kv_len].astype(np.float64) for x in (k, v))
    o_ref, lse_ref = ref.attention_forward(
        q.astype(np.float64),
        *used,
        causal=True,
        key_padding_mask=None if mask is None else mask[:, :kv_len],
    )
    tol = TOLERANCE[dtype_name]
    assert o.dtype == dtype
    assert_close(o, o_ref, rtol=tol, atol=tol * np.abs(o_ref).max(), name="o")
    assert_close(lse, lse_ref, rtol=tol, atol=tol, name="lse")


@pytest.mark.skipif(HOST is not None, reason=str(HOST))
def test_too_little_shared_memory_fails_on_host(monkeypatch, rng):
    """The host run would catch a launch that asks for less shared memory than the kernel uses."""
    import ferroformer.backends.cupy_backend as cb

    monkeypatch.setattr(
        cb, "simt_shared_bytes", lambda kernel, d_max: simt_shared_bytes(kernel, d_max) - 256
    )
    ops = OnDevice(cuda_emulator.backend("90"))
    with pytest.raises(AssertionError, match="past the dynamic shared memory"):
        check_attention(ops, (1, 1, 1, 20, 20, 64), "float32", False, False, rng)


# -- the harness catches what it claims to catch --------------------------------------------

HARNESS_KERNELS = r"""
typedef long long i64;
// out[i] = in[(i + 1) % n] through shared memory; BARRIER 0 leaves the barrier out
template <int BARRIER>
__global__ void rotate(const float* in, float* out, int n) {
    DYNAMIC_SHARED(shared);
    float* s = reinterpret_cast<float*>(shared);
    s[threadIdx.x] = in[threadIdx.x];
    if (BARRIER) __syncthreads();
    out[threadIdx.x] = s[(threadIdx.x + 1) % n];
}
// a barrier that only half of the block reaches
__global__ void divergent(float* out) {
    if (threadIdx.x < 64) __syncthreads();
    out[threadIdx.x] = 1.0f;
}
// C (16 x 8) = A (16 x 16) B (16 x 8) with ldmatrix and one mma: A and B^T row-major
// in shared memory, so A comes through ldmatrix and B^T through ldmatrix as well
__global__ void mma_tile(const __half* a, const __half* bt, float* c) {
    DYNAMIC_SHARED(shared);
    __half* sa = reinterpret_cast<__half*>(shared);  // (16, 16)
    __half* sb = sa + 256;                            // (8, 16): B^T
    for (int i = threadIdx.x; i < 256; i += 32) sa[i] = a[i];
    for (int i = threadIdx.x; i < 128; i += 32) sb[i] = bt[i];
    __syncthreads();
    const int lane = threadIdx.x, i = lane >> 3, r = lane & 7, g = lane >> 2, t = lane & 3;
    unsigned af[4], bf[4];
    ldmatrix_x4(af, sa + (r + 8 * (i & 1)) * 16 + 8 * (i >> 1));
    ldmatrix_x4(bf, sb + r * 16 + 8 * (i & 1));  // matrices 2, 3 repeat 0, 1
    float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    mma_16816<__half>(d, af, bf[0], bf[1]);
    c[g * 8 + 2 * t] = d[0];
    c[g * 8 + 2 * t + 1] = d[1];
    c[(g + 8) * 8 + 2 * t] = d[2];
    c[(g + 8) * 8 + 2 * t + 1] = d[3];
}
// a cp.async read before its wait
__global__ void early_read(const float* in, float* out) {
    DYNAMIC_SHARED(shared);
    float* s = reinterpret_cast<float*>(shared);
    cp_async_16(s + 4 * threadIdx.x, in + 4 * threadIdx.x, 16);
    __syncthreads();
    out[threadIdx.x] = s[4 * threadIdx.x];
    cp_async_wait_all();
}
"""


@pytest.fixture(scope="module")
def harness():
    if HOST is not None:
        pytest.skip(HOST)
    return cuda_host.HostModule(
        HARNESS_KERNELS,
        ["rotate<1>", "rotate<0>", "divergent", "mma_tile", "early_read"],
        "harness",
    )


def test_harness_runs_a_correct_kernel(harness):
    x = np.arange(64, dtype=np.float32)
    out = np.zeros(64, np.float32)
    for order in (0, 1):
        harness.launch(
            "rotate<1>", (1,), (64,), 256, [x.ctypes.data, out.ctypes.data, np.int32(64)], order
        )
        assert (out == np.roll(x, -1)).all()


def test_harness_exposes_a_missing_barrier(harness):
    x = np.arange(64, dtype=np.float32)
    stale = []
    for order in (0, 1):
        out = np.zeros(64, np.float32)
        harness.launch(
            "rotate<0>", (1,), (64,), 256, [x.ctypes.data, out.ctypes.data, np.int32(64)], order
        )
        stale.append(np.isnan(out).any())
    assert any(stale)


def test_harness_rejects_a_divergent_barrier(harness):
    out = np.zeros(128, np.float32)
    with pytest.raises(AssertionError, match="exited|deadlock"):
        harness.launch("divergent", (1,), (128,), 0, [out.ctypes.data])


def test_harness_mma_fragments(harness, rng):
    a = rng.standard_normal((16, 16)).astype(np.float16)
    b = rng.standard_normal((16, 8)).astype(np.float16)
    bt = np.ascontiguousarray(b.T)
    c = np.zeros((16, 8), np.float32)
    harness.launch("mma_tile", (1,), (32,), 768, [a.ctypes.data, bt.ctypes.data, c.ctypes.data])
    assert_close(c, a.astype(np.float64) @ b.astype(np.float64), rtol=1e-5, atol=1e-5)


def test_harness_cp_async_lands_at_the_wait(harness):
    x = np.arange(128, dtype=np.float32)
    out = np.zeros(32, np.float32)
    harness.launch("early_read", (1,), (32,), 512, [x.ctypes.data, out.ctypes.data])
    assert np.isnan(out).all()


# -- NVRTC: every storage type, sm_75 / sm_80 / sm_90 ----------------------------------------


def _compile(family, dtype, arch):
    import test_cuda_sources as sources_test

    if sources_test.NVRTC is None:
        pytest.skip("libnvrtc not found (pip install nvidia-cuda-nvrtc-cu12)")
    headers = cuda.header_dirs()
    if dtype != "float32" and not headers:
        pytest.skip("CUDA headers not found (pip install nvidia-cuda-runtime-cu12)")
    options = (
        *cuda.options(dtype, headers),
        *sources_test.CUPY_OPTIONS,
        f"-arch={arch}",
        "-Xptxas=-v",
    )
    return sources_test.compile_family(family, dtype, options)


COMPILE_CASES = [
    ("flash_attention", d, a)
    for d in ("float32", "float16", "bfloat16")
    for a in ("sm_75", "sm_80", "sm_90")
] + [("flash_attention_mma", d, a) for d in cuda.TENSOR_CORE_DTYPES for a in ("sm_80", "sm_90")]


@pytest.mark.parametrize("family,dtype,arch", COMPILE_CASES)
def test_flash_kernels_compile(family, dtype, arch):
    log, lowered = _compile(family, dtype, arch)
    names = {v: k for k, v in lowered.items()}
    problems = [
        line for line in log.splitlines() if re.search(r"warning|[1-9]\d* bytes spill", line)
    ]
    assert not problems, "\n".join(problems)
    current = None
    print(f"\n{family} {dtype} {arch}")
    for line in log.splitlines():
        entry = re.search(r"Compiling entry function '(\w+)'", line)
        if entry:
            current = names.get(entry.group(1), entry.group(1))
        used = re.search(r"Used (\d+) registers", line)
        if used:
            print(f"  {current}: {used.group(1)} registers")
            assert int(used.group(1)) <= 255


def test_every_tensor_core_kernel_is_listed():
    for family, templates in cuda.TENSOR_CORE_FAMILIES.items():
        body = cuda.source(family).split(f'#line 1 "{family}.cu"', 1)[1]
        defined = set(re.findall(r"__global__\s+void\s+(\w+)", body))
        assert defined == {t.split("<", 1)[0] for t in templates}


# -- launch geometry -------------------------------------------------------------------------


def test_head_dim_instantiations():
    assert [simt_head_dim(d) for d in (1, 16, 64, 65, 128, 129, 256, 257)] == [
        64,
        64,
        64,
        128,
        128,
        256,
        256,
        None,
    ]
    assert [mma_head_dim(d) for d in (8, 16, 40, 64, 72, 128, 136, 12, 100)] == [
        64,
        64,
        64,
        64,
        128,
        128,
        None,
        None,
        None,
    ]


def test_shared_memory_fits_without_opt_in():
    for d_max in cuda.SIMT_HEAD_DIMS:
        for kernel in ("forward", "backward_kv", "backward_q"):
            assert simt_shared_bytes(kernel, d_max) <= 48 * 1024
    for head_dim in cuda.MMA_HEAD_DIMS:
        for kernel in ("forward", "backward_kv", "backward_q"):
            assert mma_shared_bytes(kernel, head_dim) <= 48 * 1024


@pytest.mark.parametrize(
    "rows,tk,sms",
    [
        (1, 1, 132),
        (12, 1024, 132),
        (12, 4097, 132),
        (96, 1024, 132),
        (8, 65, 4),
        (1, 10**6, 132),
        (4096, 300, 108),
    ],
)
def test_decode_split_covers_every_key_once(rows, tk, sms):
    splits, chunk = decode_split(rows, tk, sms)
    assert splits >= 1 and splits * chunk >= tk and (splits - 1) * chunk < tk
    assert chunk >= min(tk, 64)
    wanted = min(
        -(-4 * sms // rows), max(1, tk // 64)
    )  # about 4 blocks an SM, 64 keys or more each
    assert wanted / 2 <= splits <= wanted


# -- on a GPU ----------------------------------------------------------------------------------


def gpu_dtype(ops, dtype_name):
    """The dtype ``dtype_name`` names, or a skip where this GPU does not compute in it."""
    if dtype_name not in [d.name for d in ops.float_dtypes]:
        pytest.skip(f"{dtype_name} is not available here")
    return dtype_of(dtype_name)


GPU_CASES = [
    *CASES,
    (4, 12, 12, 1024, 1024, 64),
    (2, 8, 2, 333, 1000, 128),
    (1, 4, 4, 1, 4096, 128),
]


@attention_cases(GPU_CASES)
@pytest.mark.parametrize("dtype_name", DTYPES)
def test_gpu_matches_reference(cupy_ops, case, causal, masked, dtype_name, rng):
    gpu_dtype(cupy_ops, dtype_name)
    check_attention(OnDevice(cupy_ops), case, dtype_name, causal, masked, rng)


@pytest.mark.parametrize("dtype_name", [d for d in DTYPES if d != "float32"])
def test_gpu_tensor_cores_agree_with_cuda_cores(cupy_ops, dtype_name, rng):
    if not cupy_ops._tensor_cores:
        pytest.skip("no tensor-core kernels before sm_80")
    cuda_cores = type(cupy_ops)(cupy_ops.xp)
    cuda_cores._tensor_cores = False
    dtype = dtype_of(dtype_name)
    q, k, v, do, mask = make_inputs(rng, (2, 8, 2, 300, 300, 128), True)
    q, k, v, do = (cupy_ops.xp.asarray(x.astype(dtype)) for x in (q, k, v, do))
    mask = cupy_ops.xp.asarray(mask)
    outs = []
    for ops in (cupy_ops, cuda_cores):
        o, lse = ops.attention_forward(q, k, v, causal=True, key_padding_mask=mask)
        outs.append(
            [
                x.astype(np.float32).get()
                for x in (
                    o,
                    lse,
                    *ops.attention_backward(
                        do, q, k, v, o, lse, causal=True, key_padding_mask=mask
                    ),
                )
            ]
        )
    for a, b in zip(*outs):
        assert_close(a, b, rtol=2e-2, atol=2e-2 * np.abs(b[np.isfinite(b)]).max(initial=1.0))


@pytest.mark.parametrize("dtype_name", DTYPES)
def test_gpu_memory_is_linear_in_t(cupy_ops, dtype_name):
    """At T = 16384 the scores of one head would take 1 GiB in float32; flash
    attention's forward and backward allocate a few times the inputs."""
    dtype = gpu_dtype(cupy_ops, dtype_name)
    cp = cupy_ops.xp
    pool = cp.get_default_memory_pool()
    q = cp.ones((1, 4, 16384, 64), dtype)
    pool.free_all_blocks()
    before = pool.total_bytes()
    o, lse = cupy_ops.attention_forward(q, q, q, causal=True)
    grads = cupy_ops.attention_backward(q, q, q, q, o, lse, causal=True)
    cp.cuda.Device().synchronize()
    assert pool.total_bytes() - before <= 8 * q.nbytes + 16 * lse.nbytes
    del grads


@pytest.mark.parametrize("dtype_name", DTYPES)
def test_gpu_backward_is_deterministic(cupy_ops, dtype_name, rng):
    dtype = gpu_dtype(cupy_ops, dtype_name)
    q, k, v, do, mask = make_inputs(rng, (2, 8, 2, 777, 777, 64), True)
    q, k, v, do = (cupy_ops.xp.asarray(x.astype(dtype)) for x in (q, k, v, do))
    kw = dict(causal=True, key_padding_mask=cupy_ops.xp.asarray(mask))
    o, lse = cupy_ops.attention_forward(q, k, v, **kw)
    first = cupy_ops.attention_backward(do, q, k, v, o, lse, **kw)
    for _ in range(3):
        again = cupy_ops.attention_backward(do, q, k, v, o, lse, **kw)
        for a, b in zip(first, again):
            assert bool(
                (
                    a.view(np.uint16 if a.itemsize == 2 else np.uint32)
                    == b.view(np.uint16 if b.itemsize == 2 else np.uint32)
                ).all()
            )


@pytest.mark.parametrize("dtype_name", DTYPES)
def test_gpu_decode_matches_the_last_row_of_the_forward(cupy_ops, dtype_name, rng):
    dtype = gpu_dtype(cupy_ops, dtype_name)
    q, k, v, _, _ = make_inputs(rng, (2, 8, 2, 64, 5000, 128), False)
    q, k, v = (cupy_ops.xp.asarray(x.astype(dtype)) for x in (q, k, v))
    o_full, lse_full = cupy_ops.attention_forward(q, k, v, causal=True)
    o_one, lse_one = cupy_ops.attention_forward(q[:, :, -1:], k, v, causal=True)
    tol = TOLERANCE[dtype_name]
    assert_close(
        o_one.astype(np.float32).get(),
        o_full[:, :, -1:].astype(np.float32).get(),
        rtol=tol,
        atol=tol,
    )
    assert_close(lse_one.get(), lse_full[:, :, -1:].get(), rtol=1e-4, atol=1e-4)
