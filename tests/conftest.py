import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import ferroformer as ff

# host-array backends: the cupy backend is tested apart, in test_cupy.py
FAST_BACKENDS = [n for n in ff.available_backends() if n != "numpy" and ff.backend(n).xp is np]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def ref():
    """The NumPy reference backend (run in float64 by the tests)."""
    return ff.backend("numpy")


@pytest.fixture(params=["numpy", *FAST_BACKENDS])
def backend(request):
    """Every backend that works here; the numpy one is checked in float32."""
    return ff.backend(request.param)
