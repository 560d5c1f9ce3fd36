"""Test helpers: one ``assert_close`` for every comparison, ``compare`` (a
backend in float32 against the NumPy reference in float64, the contract
tests' check), the layernorm and attention checks that the CPU and GPU tests
share, central finite differences for the gradient checks, and
``each_backend`` for the hypothesis tests."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st


def assert_close(actual, expected, *, rtol=1e-5, atol=1e-6, name="value"):
    """Compares arrays (or tuples of arrays); on failure prints the shapes,
    the first values and the largest difference, as llm.c's checks do."""
    if isinstance(actual, (tuple, list)):
        assert len(actual) == len(expected), (
            f"{name}: {len(actual)} outputs, expected {len(expected)}"
        )
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_close(a, e, rtol=rtol, atol=atol, name=f"{name}[{i}]")
        return
    if expected is None:
        assert actual is None, f"{name}: expected None"
        return
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if e.ndim == 0:  # one number for every value
        e = np.broadcast_to(e, a.shape)
    assert a.shape == e.shape, f"{name}: shape {a.shape} != expected {e.shape}"
    both_inf = np.isinf(a) & np.isinf(e) & (np.sign(a) == np.sign(e))
    a_f, e_f = np.where(both_inf, 0, a), np.where(both_inf, 0, e)
    err = np.abs(a_f - e_f)
    tol = atol + rtol * np.abs(e_f)
    bad = ~(err <= tol)
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, err - tol, -np.inf)), a.shape)
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {a.size} values differ; max abs diff "
            f"{np.nanmax(err):.3g} at {i}: got {a[i]!r}, expected {e[i]!r}\n"
            f"first got      {a.ravel()[:5]}\nfirst expected {e.ravel()[:5]}"
        )


def numerical_grad(f, x, eps=1e-6, at=None):
    """d f(x) / dx for a scalar function f of a float64 array, by central differences;
    with ``at`` (flat indices) only those entries, as a 1-D array."""
    flat = x.reshape(-1)
    idx = range(flat.size) if at is None else at
    g = np.zeros(len(idx), x.dtype)
    for j, i in enumerate(idx):
        old = flat[i]
        flat[i] = old + eps
        hi = f()
        flat[i] = old - eps
        lo = f()
        flat[i] = old
        g[j] = (hi - lo) / (2 * eps)
    return g.reshape(x.shape) if at is None else g


def noncontiguous(x):
    """The same values as ``x`` in a strided (non C-contiguous) layout."""
    if x.ndim == 0 or x.size == 0:
        return x
    big = np.empty((*x.shape[:-1], 2 * x.shape[-1]), x.dtype)
    big[..., ::2] = x
    out = big[..., ::2]
    assert not out.flags.c_contiguous or x.shape[-1] == 1
    return out


def f32(x):
    return np.asarray(x, np.float32)


def compare(backend, ref, call, inputs, *, rtol=2e-4, atol=2e-5, contiguous=True):
    """Runs ``call(ops, *inputs)`` on ``backend`` in float32 (optionally with
    strided inputs) and on the reference in float64, and compares."""
    f32_in = [f32(x) if isinstance(x, np.ndarray) and x.dtype.kind == "f" else x for x in inputs]
    if not contiguous:
        f32_in = [noncontiguous(x) if isinstance(x, np.ndarray) else x for x in f32_in]
    got = call(backend, *f32_in)
    want = call(
        ref,
        *[
            x.astype(np.float64) if isinstance(x, np.ndarray) and x.dtype.kind == "f" else x
            for x in inputs
        ],
    )
    for g in got if isinstance(got, tuple) else (got,):
        if isinstance(g, np.ndarray):
            assert g.dtype == np.float32 or g.dtype.kind != "f", g.dtype
    assert_close(got, want, rtol=rtol, atol=atol, name=backend.name)
    return got


def check_layernorm(backend, ref, x, gamma, beta, dy, *, contiguous=True, backward_atol=1e-3):
    """layernorm_forward (on strided inputs where ``contiguous`` is False) and
    layernorm_backward, from the reference's mean and rstd, against the reference."""
    compare(
        backend,
        ref,
        lambda o, x, g, b: o.layernorm_forward(x, g, b, eps=1e-5),
        [x, gamma, beta],
        contiguous=contiguous,
        rtol=1e-3,
        atol=1e-4,
    )
    _, mean, rstd = ref.layernorm_forward(x, gamma, beta, eps=1e-5)
    compare(
        backend,
        ref,
        lambda o, dy, x, g, m, r: o.layernorm_backward(dy, x, g, m, r),
        [dy, x, gamma, mean, rstd],
        rtol=1e-3,
        atol=backward_atol,
    )


def attention_cases(cases):
    """Parametrizes an attention test over ``cases`` ((B, Hq, Hkv, Tq, Tk, D) tuples, as
    ``case``), ``causal`` and ``masked`` (a key padding mask or none), each both ways."""

    def wrap(test):
        test = pytest.mark.parametrize("masked", [False, True])(test)
        test = pytest.mark.parametrize("causal", [False, True])(test)
        return pytest.mark.parametrize("case", cases, ids=str)(test)

    return wrap


# the hypothesis tests' draws: a size (past a SIMD width, below a slow reference) and a seed
dims = st.integers(1, 40)
seeds = st.integers(0, 2**16)


def each_backend(names, examples):
    """A hypothesis test run on every backend in ``names`` (as its ``name`` argument),
    ``examples`` examples each; no deadline, since a backend's first call may compile
    or warm up."""

    def wrap(test):
        test = settings(max_examples=examples, deadline=None)(test)
        return pytest.mark.parametrize("name", names)(test)

    return wrap
