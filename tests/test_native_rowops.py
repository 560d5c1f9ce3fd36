"""The row-wise native kernels (softmax, norms, activations, cross-entropy,
embedding, rope, AdamW) against float64 NumPy formulas."""

import math

import numpy as np
import pytest

from helpers import assert_close

native = pytest.importorskip("ferroformer._native")

RTOL = 1e-5


def rng(seed=0):
    return np.random.default_rng(seed)


def f32(a):
    return np.ascontiguousarray(a, dtype=np.float32)


def close(got, want, rtol=RTOL, atol=1e-6):
    assert got.dtype == np.float32
    assert got.shape == want.shape
    assert_close(got.astype(np.float64), want, rtol=rtol, atol=atol)


def ref_softmax(x, scale, causal):
    z = x.astype(np.float64) * scale
    if causal:
        tq, tk = z.shape[-2:]
        i = np.arange(tq)[:, None]
        j = np.arange(tk)[None, :]
        z = np.where(j <= i + tk - tq, z, -np.inf)
    m = z.max(-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(z - m)
    s = e.sum(-1, keepdims=True)
    return np.divide(e, s, out=np.zeros_like(e), where=s > 0)


@pytest.mark.parametrize("shape", [(5,), (3, 7), (2, 3, 17), (2, 65, 257)])
@pytest.mark.parametrize("scale", [1.0, 0.125])
def test_softmax(shape, scale):
    x = f32(rng(1).normal(size=shape) * 3)
    close(native.softmax_forward(x, scale, False), ref_softmax(x, scale, False))
    if len(shape) >= 2:
        close(native.softmax_forward(x, scale, True), ref_softmax(x, scale, True))
    y = native.softmax_forward(x, scale, False)
    dy = f32(rng(2).normal(size=shape))
    yd, dyd = y.astype(np.float64), dy.astype(np.float64)
    want = scale * yd * (dyd - (dyd * yd).sum(-1, keepdims=True))
    close(native.softmax_backward(dy, y, scale), want, rtol=1e-4)


def test_softmax_causal_tk_lt_tq_gives_zero_rows():
    x = f32(np.ones((4, 2)))
    y = native.softmax_forward(x, 1.0, True)
    assert not np.isnan(y).any()
    np.testing.assert_array_equal(y[:2], 0.0)
    close(y, ref_softmax(x, 1.0, True))


def test_softmax_errors():
    with pytest.raises(ValueError):
        native.softmax_forward(f32(np.ones(3)), 1.0, True)
    # the kernel checks y's size; its shape (same size, other dims) is the Python layer's check
    with pytest.raises(ValueError, match="softmax_backward: y has 9 elements"):
        native.softmax_backward(f32(np.ones((2, 3))), f32(np.ones((3, 3))), 1.0)


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 5, 65), (4, 768)])
def test_layernorm(shape):
    r = rng(3)
    x = f32(r.normal(size=shape) + 4.0)
    c = shape[-1]
    gamma, beta = f32(r.normal(size=c)), f32(r.normal(size=c))
    dy = f32(r.normal(size=shape))
    y, mean, rstd = native.layernorm_forward(x, gamma, beta, 1e-5)
    xd = x.astype(np.float64)
    mu = xd.mean(-1, keepdims=True)
    rs = 1.0 / np.sqrt(((xd - mu) ** 2).mean(-1, keepdims=True) + 1e-5)
    xhat = (xd - mu) * rs
    close(y, xhat * gamma + beta, rtol=1e-4, atol=1e-5)
    close(mean, mu[..., 0])
    close(rstd, rs[..., 0], rtol=1e-4)
    dx, dg, db = native.layernorm_backward(dy, x, gamma, mean, rstd)
    g = dy.astype(np.float64) * gamma
    want_dx = rs * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    axes = tuple(range(len(shape) - 1))
    close(dx, want_dx, rtol=1e-3, atol=1e-4)
    close(dg, (dy * xhat).sum(axes), rtol=1e-4, atol=1e-4)
    close(db, dy.astype(np.float64).sum(axes), atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 5, 65)])
def test_rmsnorm(shape):
    r = rng(4)
    x, dy = f32(r.normal(size=shape)), f32(r.normal(size=shape))
    gamma = f32(r.normal(size=shape[-1]))
    y, rstd = native.rmsnorm_forward(x, gamma, 1e-6)
    xd = x.astype(np.float64)
    rs = 1.0 / np.sqrt((xd**2).mean(-1, keepdims=True) + 1e-6)
    close(y, xd * rs * gamma)
    close(rstd, rs[..., 0], rtol=1e-4)
    dx, dg = native.rmsnorm_backward(dy, x, gamma, rstd)
    g = dy.astype(np.float64) * gamma
    want = rs * (g - xd * rs**2 * (g * xd).mean(-1, keepdims=True))
    close(dx, want, rtol=1e-4, atol=1e-5)
    close(dg, (dy * xd * rs).sum(tuple(range(len(shape) - 1))), rtol=1e-4, atol=1e-5)


def _erf(v):
    return np.vectorize(math.erf)(v)


def ref_gelu(x, approximate):
    x = x.astype(np.float64)
    if approximate == "tanh":
        k = math.sqrt(2 / math.pi)
        u = k * (x + 0.044715 * x**3)
        s = 1 / (1 + np.exp(-2 * u))  # 0.5 (1 + tanh u), without cancellation
        return x * s, s + x * 2 * s * (1 - s) * k * (1 + 3 * 0.044715 * x**2)
    cdf = 0.5 * np.vectorize(math.erfc)(-x / math.sqrt(2))
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    return x * cdf, cdf + x * pdf


@pytest.mark.parametrize("approximate", ["tanh", "none"])
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 17), (4, 257)])
def test_gelu(approximate, shape):
    x = f32(rng(5).normal(size=shape) * 4)
    dy = f32(rng(6).normal(size=shape))
    y, d = ref_gelu(x, approximate)
    close(native.gelu_forward(x, approximate), y, atol=1e-7)
    close(native.gelu_backward(dy, x, approximate), dy * d, atol=1e-7)


def test_gelu_bad_approximate():
    with pytest.raises(ValueError, match="approximate"):
        native.gelu_forward(f32(np.ones(3)), "erf")
    with pytest.raises(ValueError):
        native.gelu_backward(f32(np.ones(3)), f32(np.ones(3)), "fast")


def test_relu_silu_swiglu():
    r = rng(7)
    x, dy, up = (f32(r.normal(size=(5, 33)) * 3) for _ in range(3))
    x[0, :3] = 0.0
    xd, dyd, ud = x.astype(np.float64), dy.astype(np.float64), up.astype(np.float64)
    close(native.relu_forward(x), np.maximum(xd, 0))
    close(native.relu_backward(dy, x), np.where(xd > 0, dyd, 0.0))
    s = 1 / (1 + np.exp(-xd))
    close(native.silu_forward(x), xd * s)
    close(native.silu_backward(dy, x), dyd * s * (1 + xd * (1 - s)))
    close(native.swiglu_forward(x, up), xd * s * ud)
    dg, du = native.swiglu_backward(dy, x, up)
    close(dg, dyd * ud * s * (1 + xd * (1 - s)))
    close(du, dyd * xd * s)


def ref_cross_entropy(z, t, ignore, eps, grad=1.0):
    z = z.astype(np.float64)
    n, v = z.shape
    m = z.max(1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(1, keepdims=True)))[:, 0]
    keep = t != ignore
    count = keep.sum()
    tt = np.where(keep, t, 0)
    rows = (1 - eps) * (lse - z[np.arange(n), tt]) + eps * (lse - z.mean(1))
    loss = rows[keep].sum() / count if count else 0.0
    p = np.exp(z - lse[:, None])
    onehot = np.zeros_like(z)
    onehot[np.arange(n), tt] = 1.0
    dz = (p - (1 - eps) * onehot - eps / v) * (grad / max(count, 1))
    dz[~keep] = 0.0
    return loss, lse, dz


@pytest.mark.parametrize("v", [1, 7, 65, 1000])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_cross_entropy(v, eps):
    r = rng(8)
    n = 11
    z = f32(r.normal(size=(n, v)) * 3)
    t = r.integers(0, v, size=n).astype(np.int64)
    t[3] = -100
    loss, lse = native.cross_entropy_forward(z, t, -100, eps)
    wl, wlse, wdz = ref_cross_entropy(z, t, -100, eps, grad=0.5)
    assert isinstance(loss, float)
    assert loss == pytest.approx(wl, rel=1e-5, abs=1e-6)
    close(lse, wlse)
    close(native.cross_entropy_backward(z, t, lse, -100, eps, 0.5), wdz, atol=1e-7)


def test_cross_entropy_all_ignored_and_bad_target():
    z = f32(np.zeros((2, 4)))
    t = np.array([-1, -1], dtype=np.int64)
    loss, lse = native.cross_entropy_forward(z, t, -1, 0.0)
    assert loss == 0.0
    np.testing.assert_array_equal(native.cross_entropy_backward(z, t, lse, -1, 0.0, 1.0), 0.0)
    with pytest.raises(IndexError, match=r"cross_entropy_forward.*target 4 at row 1"):
        native.cross_entropy_forward(z, np.array([0, 4], dtype=np.int64), -100, 0.0)
    with pytest.raises(IndexError, match="cross_entropy_backward"):
        native.cross_entropy_backward(z, np.array([-3, 0], dtype=np.int64), lse, -100, 0.0, 1.0)


def test_embedding():
    r = rng(9)
    w = f32(r.normal(size=(13, 17)))
    ids = r.integers(0, 13, size=(3, 5)).astype(np.int64)
    out = native.embedding_forward(w, ids)
    assert out.shape == (3, 5, 17)
    np.testing.assert_array_equal(out, w[ids])
    dy = f32(r.normal(size=(3, 5, 17)))
    want = np.zeros((13, 17))
    np.add.at(want, ids.reshape(-1), dy.reshape(-1, 17).astype(np.float64))
    close(native.embedding_backward(dy, ids, 13), want)
    with pytest.raises(IndexError, match=r"embedding_forward.*id 13.*13"):
        native.embedding_forward(w, np.array([1, 13], dtype=np.int64))
    with pytest.raises(IndexError):
        native.embedding_forward(w, np.array([-1], dtype=np.int64))
    with pytest.raises(IndexError):
        native.embedding_backward(dy, ids, 5)


@pytest.mark.parametrize("d", [2, 16, 34, 64])
def test_rope(d):
    r = rng(10)
    b, h, t = 2, 3, 5
    x = f32(r.normal(size=(b, h, t, d)))
    ang = r.normal(size=(t, d // 2))
    cos, sin = f32(np.cos(ang)), f32(np.sin(ang))
    xd = x.astype(np.float64)
    x0, x1 = xd[..., 0::2], xd[..., 1::2]
    c, s = cos.astype(np.float64), sin.astype(np.float64)
    want = np.empty_like(xd)
    want[..., 0::2] = x0 * c - x1 * s
    want[..., 1::2] = x0 * s + x1 * c
    y = native.rope_forward(x, cos, sin)
    close(y, want)
    close(native.rope_backward(y, cos, sin), xd, atol=1e-5)
    with pytest.raises(ValueError):
        native.rope_forward(f32(np.ones((2, 5, 3))), f32(np.ones((5, 1))), f32(np.ones((5, 1))))
    with pytest.raises(ValueError):
        native.rope_forward(x, cos[:-1], sin[:-1])


def test_adamw_step():
    r = rng(11)
    shape = (7, 33)
    p, g = f32(r.normal(size=shape)), f32(r.normal(size=shape))
    m, v = f32(r.normal(size=shape) * 0.1), f32(r.random(size=shape) * 0.01)
    lr, b1, b2, eps, wd, step = 1e-3, 0.9, 0.999, 1e-8, 0.01, 4
    pd, gd, md, vd = (a.astype(np.float64) for a in (p, g, m, v))
    pd = pd * (1 - lr * wd)
    md = b1 * md + (1 - b1) * gd
    vd = b2 * vd + (1 - b2) * gd * gd
    pd = pd - lr * (md / (1 - b1**step)) / (np.sqrt(vd / (1 - b2**step)) + eps)
    assert native.adamw_step(p, g, m, v, lr, b1, b2, eps, wd, step) is None
    close(m, md, atol=1e-8)
    close(v, vd, atol=1e-10)
    close(p, pd, atol=1e-7)
    with pytest.raises(ValueError, match="step"):
        native.adamw_step(p, g, m, v, lr, b1, b2, eps, wd, 0)
    with pytest.raises(ValueError):
        native.adamw_step(p, g[:3], m, v, lr, b1, b2, eps, wd, 1)
    with pytest.raises(ValueError):
        native.adamw_step(p[:, ::2], g[:, ::2], m[:, ::2], v[:, ::2], lr, b1, b2, eps, wd, 1)
