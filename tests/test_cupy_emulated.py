"""The cupy backend's Python side, without a GPU: test_ops.py's whole contract
(and test_errors.py's backend-neutral checks) run on a CupyBackend whose CuPy
is the NumPy stand-in of cuda_emulator.py. Every kernel launch is checked
against its CUDA signature and launch shape, every cuBLAS call against
column-major GEMM semantics; the kernels themselves are NumPy twins, so what
this cannot see is the CUDA code inside the kernels (that needs a GPU:
test_cupy.py)."""

from __future__ import annotations

import sys

import pytest

from ferroformer.backends.cupy_backend import CupyBackend, load_cupy_backend

import cuda_emulator


@pytest.fixture(scope="module")
def emulated():
    return cuda_emulator.backend()


def test_loader_returns_the_backend_when_a_gpu_is_there(monkeypatch):
    fake = cuda_emulator.make_module()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setitem(sys.modules, "cupy.cuda", fake.cuda)
    monkeypatch.setitem(sys.modules, "cupy.cuda.compiler", fake.cuda.compiler)
    ops = load_cupy_backend()
    assert isinstance(ops, CupyBackend) and ops.name == "cupy" and ops.xp is fake
