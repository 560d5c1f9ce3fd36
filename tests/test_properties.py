"""Property tests with hypothesis: random shapes for the core ops agree with
the float64 reference."""

from __future__ import annotations

import numpy as np
from devices import HOST_BACKENDS
from hypothesis import given
from hypothesis import strategies as st

import ferroformer as ff

from helpers import assert_close, dims, each_backend, seeds

BACKENDS = HOST_BACKENDS


def data(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape)


@each_backend(BACKENDS, 25)
@given(
    m=dims,
    k=dims,
    n=dims,
    batch=st.integers(1, 3),
    ta=st.booleans(),
    tb=st.booleans(),
    seed=seeds,
)
def test_matmul_any_shape(name, m, k, n, batch, ta, tb, seed):
    ops, ref = ff.backend(name), ff.backend("numpy")
    a = data(seed, batch, *((k, m) if ta else (m, k)))
    b = data(seed + 1, *((n, k) if tb else (k, n)))
    got = ops.matmul(a.astype(np.float32), b.astype(np.float32), trans_a=ta, trans_b=tb)
    assert_close(got, ref.matmul(a, b, trans_a=ta, trans_b=tb), rtol=1e-4, atol=1e-4)


@each_backend(BACKENDS, 25)
@given(rows=dims, tk=dims, causal=st.booleans(), seed=seeds)
def test_softmax_any_shape(name, rows, tk, causal, seed):
    ops, ref = ff.backend(name), ff.backend("numpy")
    x = 5 * data(seed, rows, tk)
    got = ops.softmax_forward(x.astype(np.float32), causal=causal)
    assert_close(got, ref.softmax_forward(x, causal=causal), rtol=1e-4, atol=1e-6)


@each_backend(BACKENDS, 25)
@given(rows=dims, c=st.integers(1, 300), seed=seeds)
def test_layernorm_any_shape(name, rows, c, seed):
    ops, ref = ff.backend(name), ff.backend("numpy")
    x, g, b = data(seed, rows, c), data(seed + 1, c), data(seed + 2, c)
    got = ops.layernorm_forward(x.astype(np.float32), g.astype(np.float32), b.astype(np.float32))
    assert_close(got, ref.layernorm_forward(x, g, b), rtol=1e-3, atol=1e-4)


@each_backend(BACKENDS, 15)
@given(
    b=st.integers(1, 2),
    hkv=st.integers(1, 2),
    groups=st.integers(1, 3),
    tq=dims,
    tk=dims,
    d=st.sampled_from([16, 24, 64]),
    causal=st.booleans(),
    seed=seeds,
)
def test_attention_any_shape(name, b, hkv, groups, tq, tk, d, causal, seed):
    ops, ref = ff.backend(name), ff.backend("numpy")
    q = data(seed, b, hkv * groups, tq, d)
    k, v = data(seed + 1, b, hkv, tk, d), data(seed + 2, b, hkv, tk, d)
    o, lse = ops.attention_forward(*(x.astype(np.float32) for x in (q, k, v)), causal=causal)
    want = ref.attention_forward(q, k, v, causal=causal)
    assert_close((o, lse), want, rtol=1e-3, atol=1e-4)
