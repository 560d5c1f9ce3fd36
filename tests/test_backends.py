"""Choosing backends: names, defaults, the environment variable, threads."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import ferroformer as ff

from helpers import assert_close


def test_numpy_always_available():
    assert "numpy" in ff.available_backends()
    assert ff.backend("numpy").xp is np
    assert ff.backend("NumPy") is ff.backend("numpy")


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'torch'"):
        ff.backend("torch")


def test_cupy_missing_says_why():
    if "cupy" in ff.available_backends():
        pytest.skip("a GPU is usable here")
    with pytest.raises(ff.BackendUnavailable, match="cupy"):
        ff.backend("cupy")


def test_default_is_fastest_available():
    code = "import ferroformer as ff; print(ff.backend().name)"
    env = {k: v for k, v in os.environ.items() if k != "FERROFORMER_BACKEND"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    want = next(n for n in ("cupy", "rust", "numpy") if n in ff.available_backends())
    assert out == want


def test_environment_variable_sets_default():
    code = "import ferroformer as ff; print(ff.backend().name)"
    env = dict(os.environ, FERROFORMER_BACKEND="numpy")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "numpy"


def test_set_backend_returns_backend():
    before = ff.backend()
    try:
        assert ff.set_backend("numpy") is ff.backend("numpy")
        assert ff.backend() is ff.backend("numpy")
    finally:
        ff.set_backend(before)


@pytest.mark.skipif("rust" not in ff.available_backends(), reason="rust backend not built")
def test_set_num_threads_changes_pool_and_results_stay_equal():
    ops = ff.backend("rust")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((300, 200)).astype(np.float32)
    b = rng.standard_normal((200, 100)).astype(np.float32)
    before = ff.get_num_threads()
    try:
        ff.set_num_threads(1)
        assert ff.get_num_threads() == 1
        one = ops.matmul(a, b)
        ff.set_num_threads(2)
        assert ff.get_num_threads() == 2
        assert_close(ops.matmul(a, b), one, rtol=1e-5, atol=1e-5)
    finally:
        ff.set_num_threads(before)
    with pytest.raises(ValueError):
        ff.set_num_threads(-1)
