"""The cupy backend: the loader's messages (everywhere), and on a GPU what
only a device backend has: arrays on the device, moving between backends,
determinism, and the kernels' large-row paths. The op contract itself runs
on the GPU through test_ops.py's ``backend`` fixture ("cupy", see devices.py).
Without CuPy or a usable GPU the GPU tests skip, saying why.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from devices import NO_GPU, OnDevice

import ferroformer as ff
from ferroformer.backends import BackendUnavailable
from ferroformer.backends.cupy_backend import load_cupy_backend, row_launch, row_threads

from helpers import assert_close, check_layernorm, compare

# -- the loader, on every machine ---------------------------------------------------


def test_loader_without_cupy_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy now raises ImportError
    with pytest.raises(
        BackendUnavailable, match=r"needs CuPy: pip install 'ferroformer\[cuda12\]'"
    ):
        load_cupy_backend()


def _fake_cupy(get_device_count):
    class CUDARuntimeError(RuntimeError):
        pass

    runtime = types.SimpleNamespace(
        getDeviceCount=get_device_count, CUDARuntimeError=CUDARuntimeError
    )
    compiler = types.ModuleType("cupy.cuda.compiler")
    compiler.CompileException = type("CompileException", (Exception,), {})
    cuda = types.ModuleType("cupy.cuda")
    cuda.runtime, cuda.compiler = runtime, compiler
    cupy = types.ModuleType("cupy")
    cupy.cuda = cuda
    return cupy, CUDARuntimeError


def install(monkeypatch, cupy):
    """Makes ``import cupy`` (and its cuda and compiler modules) give the fake."""
    for name, module in (
        ("cupy", cupy),
        ("cupy.cuda", cupy.cuda),
        ("cupy.cuda.compiler", cupy.cuda.compiler),
    ):
        monkeypatch.setitem(sys.modules, name, module)


def test_loader_without_gpu_says_so(monkeypatch):
    cupy, _ = _fake_cupy(lambda: 0)
    install(monkeypatch, cupy)
    with pytest.raises(BackendUnavailable, match="found no CUDA GPU"):
        load_cupy_backend()


def test_loader_with_unusable_driver_says_why(monkeypatch):
    def no_driver():
        raise error("cudaErrorInsufficientDriver: CUDA driver version is insufficient")

    cupy, error = _fake_cupy(no_driver)
    install(monkeypatch, cupy)
    with pytest.raises(BackendUnavailable, match="no usable CUDA GPU .*InsufficientDriver"):
        load_cupy_backend()


@pytest.mark.skipif(NO_GPU is None, reason="a GPU is usable here")
def test_registry_leaves_cupy_out_and_says_why():
    assert "cupy" not in ff.available_backends()
    with pytest.raises(BackendUnavailable, match="cupy backend") as info:
        ff.backend("cupy")
    assert str(info.value)


def test_row_launch_shapes():
    # short rows: a warp each, eight to a block; long rows: a block each, <= 1024 threads
    assert row_launch(10, 1) == ((2,), (32, 8))
    assert row_launch(16, 256) == ((2,), (32, 8))
    assert row_launch(5, 257) == ((5,), (64,))
    assert row_launch(3, 768) == ((3,), (128,))
    assert row_launch(2, 50257) == ((2,), (1024,))
    for cols in (1, 7, 100, 768, 4097, 10**6):
        t = row_threads(cols)
        assert t % 32 == 0 and 32 <= t <= 1024
        assert t == 1024 or cols <= 8 * t


# -- what only a device backend has -------------------------------------------------------


def test_results_live_on_the_device(cupy_ops, rng):
    cp = cupy_ops.xp
    x = cp.asarray(rng.standard_normal((7, 65)), np.float32)
    g = cp.ones(65, np.float32)
    outputs = [
        cupy_ops.softmax_forward(x),
        *cupy_ops.layernorm_forward(x, g, g),
        cupy_ops.matmul(x, x, trans_b=True),
        cupy_ops.gelu_forward(x),
    ]
    for y in outputs:
        assert isinstance(y, cp.ndarray) and y.flags.c_contiguous and y.dtype == np.float32


def test_numpy_input_is_a_type_error(cupy_ops):
    with pytest.raises(TypeError, match="must be a cupy.ndarray"):
        cupy_ops.softmax_forward(np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match="cupy backend computes in float32"):
        cupy_ops.gelu_forward(cupy_ops.xp.zeros(3))


def test_arrays_move_between_backends(cupy_ops, rng):
    x = rng.standard_normal((3, 5)).astype(np.float32)
    on_gpu = cupy_ops.asarray(x)
    assert isinstance(on_gpu, cupy_ops.xp.ndarray)
    back = ff.backend("numpy").asarray(on_gpu)
    assert isinstance(back, np.ndarray) and np.array_equal(back, x)
    y = cupy_ops.softmax_forward(on_gpu)
    want = ff.backend("numpy").softmax_forward(x.astype(np.float64))
    for name in ff.available_backends():
        moved = ff.backend(name).asarray(y)
        assert_close(moved.get() if name == "cupy" else moved, want, rtol=1e-5)


def test_matmul_takes_transposed_and_broadcast_views(cupy_ops, ref, rng):
    cp = cupy_ops.xp
    a = rng.standard_normal((3, 4, 17, 9))
    b = rng.standard_normal((4, 11, 17))
    da, db = cp.asarray(a, np.float32), cp.asarray(b, np.float32)
    got = cupy_ops.matmul(cp.swapaxes(da, -1, -2), cp.swapaxes(db, -1, -2))  # both views, no flags
    assert_close(got.get(), ref.matmul(a, b, trans_a=True, trans_b=True), rtol=1e-5, atol=1e-5)
    got = cupy_ops.matmul(da[:, :1], db, trans_a=True, trans_b=True)  # (3, 1) x (4,) batches
    assert_close(
        got.get(), ref.matmul(a[:, :1], b, trans_a=True, trans_b=True), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("cols", [8192, 50257])
def test_long_rows(cupy_ops, ref, rng, cols):
    """Rows past the shared-memory accumulators of layernorm_backward, and a
    GPT-2-sized vocabulary for softmax and cross-entropy (1024 threads a row)."""
    x, dy = rng.standard_normal((9, cols)), rng.standard_normal((9, cols))
    gamma, beta = rng.standard_normal(cols), rng.standard_normal(cols)
    on = OnDevice(cupy_ops)
    compare(on, ref, lambda o, x: o.softmax_forward(x, scale=0.5), [x])
    check_layernorm(on, ref, x, gamma, beta, dy)
    targets = rng.integers(0, cols, 9)
    loss, lse = on.cross_entropy_forward(x.astype(np.float32), targets)
    want_loss, want_lse = ref.cross_entropy_forward(x, targets)
    assert_close(loss, want_loss, rtol=1e-5)
    assert_close(lse, want_lse, rtol=1e-5)


@pytest.mark.parametrize("cols", [768, 8192])
def test_norm_parameter_grads_are_deterministic(cupy_ops, rng, cols):
    cp = cupy_ops.xp
    x, dy = (cp.asarray(rng.standard_normal((4096, cols)), np.float32) for _ in range(2))
    gamma = cp.asarray(rng.standard_normal(cols), np.float32)
    _, mean, rstd = cupy_ops.layernorm_forward(x, gamma, gamma)
    first = cupy_ops.layernorm_backward(dy, x, gamma, mean, rstd)
    for _ in range(3):
        again = cupy_ops.layernorm_backward(dy, x, gamma, mean, rstd)
        for a, b in zip(first, again):
            assert bool((a == b).all())
