"""ferroformer._native attention bindings against a float64 NumPy reference.

The reference materialises the full score matrix (fine at test sizes) and
writes the softmax gradient out analytically, so no finite differences.
"""

import numpy as np
import pytest

from helpers import assert_close

native = pytest.importorskip("ferroformer._native")


def visible(b, tq, tk, causal, mask):
    """(B, 1, Tq, Tk) bool: which keys each query may see."""
    vis = np.ones((b, 1, tq, tk), dtype=bool)
    if causal:
        i = np.arange(tq)[:, None]
        j = np.arange(tk)[None, :]
        vis &= j <= i + tk - tq
    if mask is not None:
        vis &= ~mask[:, None, None, :]
    return vis


def reference(q, k, v, d_o, causal, scale, mask):
    """float64 (o, lse, dq, dk, dv); q (B, Hq, Tq, D), k, v (B, Hkv, Tk, D)."""
    q, k, v, d_o = (x.astype(np.float64) for x in (q, k, v, d_o))
    b, hq, tq, _ = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    g = hq // hkv
    kr, vr = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    vis = visible(b, tq, tk, causal, mask)
    s = np.where(vis, scale * q @ kr.transpose(0, 1, 3, 2), -np.inf)
    m = s.max(axis=-1, keepdims=True)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(s - m_safe)
    l = e.sum(axis=-1, keepdims=True)
    p = np.where(l > 0, e / np.where(l > 0, l, 1.0), 0.0)
    o = p @ vr
    with np.errstate(divide="ignore"):
        lse = np.where(l[..., 0] > 0, m_safe[..., 0] + np.log(l[..., 0]), -np.inf)
    dp = d_o @ vr.transpose(0, 1, 3, 2)
    ds = p * (dp - (d_o * o).sum(-1, keepdims=True)) * scale
    dq = ds @ kr
    dk = (ds.transpose(0, 1, 3, 2) @ q).reshape(b, hkv, g, tk, -1).sum(2)
    dv = (p.transpose(0, 1, 3, 2) @ d_o).reshape(b, hkv, g, tk, -1).sum(2)
    return o, lse, dq, dk, dv


def inputs(b, hq, hkv, tq, tk, d, masked=False, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, hq, tq, d), dtype=np.float32)
    k = rng.standard_normal((b, hkv, tk, d), dtype=np.float32)
    v = rng.standard_normal((b, hkv, tk, d), dtype=np.float32)
    d_o = rng.standard_normal((b, hq, tq, d), dtype=np.float32)
    mask = None
    if masked:
        mask = rng.random((b, tk)) < 0.3
        mask[-1, :] = True  # a batch whose every key is padding
    return q, k, v, d_o, mask


def close_scaled(got, want, tol, what):
    """Within tol of the largest finite |want| (at least 1), inf where want is inf."""
    finite = np.isfinite(want)
    big = max(1.0, float(np.abs(want[finite]).max(initial=0.0)))
    assert_close(got, want, rtol=0.0, atol=tol * big, name=what)


def run_and_check(b, hq, hkv, tq, tk, d, causal, masked, seed=0, tol=5e-5):
    q, k, v, d_o, mask = inputs(b, hq, hkv, tq, tk, d, masked, seed)
    scale = 1.0 / np.sqrt(d)
    o, lse = native.attention_forward(q, k, v, causal, scale, mask)
    assert o.dtype == np.float32 and o.shape == q.shape and lse.shape == q.shape[:3]
    ro, rlse, rdq, rdk, rdv = reference(q, k, v, d_o, causal, scale, mask)
    close_scaled(o, ro, tol, "o")
    close_scaled(lse, rlse, tol, "lse")
    dq, dk, dv = native.attention_backward(d_o, q, k, v, o, lse, causal, scale, mask)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape
    for got, want, name in ((dq, rdq, "dq"), (dk, rdk, "dk"), (dv, rdv, "dv")):
        close_scaled(got, want, tol, name)


@pytest.mark.parametrize("t", [1, 7, 17, 65, 257])
@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_odd_lengths(t, causal):
    run_and_check(2, 3, 3, t, t, 64, causal, masked=False, seed=t)


@pytest.mark.parametrize("d", [16, 24, 64, 80, 128, 256])
def test_head_dims(d):
    run_and_check(1, 2, 2, 70, 70, d, causal=True, masked=False, seed=d)


@pytest.mark.parametrize(
    "tq,tk", [(1, 1024), (1, 7), (3, 300), (17, 65), (65, 17), (100, 7), (129, 300)]
)
@pytest.mark.parametrize("causal", [False, True])
def test_cross_attention_and_decode(tq, tk, causal):
    run_and_check(1, 4, 2, tq, tk, 32, causal, masked=False, seed=tq + tk)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("tq,tk", [(33, 33), (1, 200), (70, 130)])
def test_key_padding_mask(tq, tk, causal):
    run_and_check(2, 4, 1, tq, tk, 64, causal, masked=True, seed=tq)


def test_grouped_query_attention():
    run_and_check(2, 8, 2, 96, 96, 64, causal=True, masked=False, seed=5)


def test_long_sequence():
    run_and_check(1, 2, 2, 4096, 4096, 64, causal=True, masked=False, seed=9, tol=1e-4)


def test_rows_without_keys():
    # Tq > Tk under causal: the first Tq - Tk queries see no key.
    q, k, v, d_o, _ = inputs(1, 2, 2, 40, 10, 16)
    o, lse = native.attention_forward(q, k, v, True, 0.25, None)
    assert (o[:, :, :30] == 0).all() and np.isneginf(lse[:, :, :30]).all()
    dq, dk, dv = native.attention_backward(d_o, q, k, v, o, lse, True, 0.25, None)
    assert (dq[:, :, :30] == 0).all()
    assert all(np.isfinite(x).all() for x in (o, dq, dk, dv))


def test_analytic_identities():
    """Rows of P sum to 1, so sum_j dv_j = sum_i do_i and sum_j dk_j = 0;
    constant values give o = v."""
    q, k, v, d_o, _ = inputs(1, 2, 2, 50, 50, 32, seed=3)
    o, lse = native.attention_forward(q, k, v, True, 0.2, None)
    _dq, dk, dv = native.attention_backward(d_o, q, k, v, o, lse, True, 0.2, None)
    assert_close(dv.sum(axis=2), d_o.sum(axis=2), atol=1e-4, rtol=1e-7)
    assert_close(dk.sum(axis=2), 0.0, atol=1e-4, rtol=1e-7)
    const = np.broadcast_to(np.arange(32, dtype=np.float32), v.shape).copy()
    o, _ = native.attention_forward(q, k, const, False, 0.2, None)
    assert_close(o, const[:, :, :50], rtol=1e-5, atol=0)


def test_deterministic_bits():
    q, k, v, d_o, mask = inputs(2, 4, 2, 200, 200, 64, masked=True, seed=11)
    runs = []
    for _ in range(2):
        o, lse = native.attention_forward(q, k, v, True, 0.125, mask)
        runs.append((o, lse, *native.attention_backward(d_o, q, k, v, o, lse, True, 0.125, mask)))
    for a, b in zip(*runs):
        assert a.tobytes() == b.tobytes()


def test_bad_input_raises():
    q, k, v, d_o, _ = inputs(1, 3, 2, 4, 4, 8)
    with pytest.raises(ValueError):
        native.attention_forward(q, k, v, False, 1.0, None)  # 3 % 2 != 0
    q, k, v, d_o, _ = inputs(1, 2, 2, 4, 4, 8)
    with pytest.raises(ValueError):
        native.attention_forward(q, k[..., :4].copy(), v, False, 1.0, None)
    with pytest.raises(ValueError):
        native.attention_forward(q, k, v, False, 1.0, np.zeros((1, 5), dtype=bool))
    with pytest.raises(ValueError):
        native.attention_forward(q[:, :, ::2], k[:, :, ::2], v[:, :, ::2], False, 1.0, None)
    with pytest.raises(ValueError):
        native.attention_forward(q, k, v, False, float("nan"), None)
    o, lse = native.attention_forward(q, k, v, False, 1.0, None)
    with pytest.raises(ValueError):
        native.attention_backward(d_o, q, k, v, o, lse[..., :2].copy(), False, 1.0, None)
