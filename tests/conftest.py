import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from devices import BACKENDS, FAST_BACKENDS, HOST_BACKENDS, NO_GPU, make_backend  # noqa: F401

import ferroformer as ff


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def ref():
    """The NumPy reference backend (run in float64 by the tests)."""
    return ff.backend("numpy")


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Every backend: numpy (checked in float32), rust, the cupy backend on the CUDA
    stand-in, and on a real GPU where there is one (see devices.py)."""
    return make_backend(request.param)


@pytest.fixture(params=HOST_BACKENDS)
def host_backend(request):
    """The backends that take and return NumPy arrays themselves (models run on them)."""
    return ff.backend(request.param)


@pytest.fixture
def cupy_ops():
    """The cupy backend on a real GPU, on device arrays; a skip without one."""
    if NO_GPU is not None:
        pytest.skip(f"cupy backend: {NO_GPU}")
    return ff.backend("cupy")  # with a GPU present it must load: an error here fails
