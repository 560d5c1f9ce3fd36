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
import test_errors
import test_ops
from test_cupy import OnDevice

from ferroformer.backends.cupy_backend import CupyBackend, load_cupy_backend

import cuda_emulator


@pytest.fixture(scope="module")
def emulated():
    return cuda_emulator.backend()


@pytest.fixture
def backend(emulated):
    """Overrides conftest's fixture for the contract tests collected below."""
    return OnDevice(emulated)


globals().update({name: fn for name, fn in vars(test_ops).items() if name.startswith("test_")})
test_shape_errors_are_value_errors = test_errors.test_shape_errors_are_value_errors
test_out_of_range_ids_are_index_errors = test_errors.test_out_of_range_ids_are_index_errors
test_empty_inputs_do_not_crash = test_errors.test_empty_inputs_do_not_crash


def test_loader_returns_the_backend_when_a_gpu_is_there(monkeypatch):
    fake = cuda_emulator.make_module()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setitem(sys.modules, "cupy.cuda", fake.cuda)
    monkeypatch.setitem(sys.modules, "cupy.cuda.compiler", fake.cuda.compiler)
    ops = load_cupy_backend()
    assert isinstance(ops, CupyBackend) and ops.name == "cupy" and ops.xp is fake
