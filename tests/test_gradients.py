"""Every backward of the NumPy reference checked by central finite
differences in float64; the fast backends are then held to the reference
by test_ops.py."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import assert_close, numerical_grad


def check(forward, backward, inputs, rng, *, rtol=1e-5, atol=1e-7):
    """``forward(*inputs)`` returns y (or a tuple whose first item is y);
    ``backward(g, *inputs)`` returns the input gradients (tuple) of sum(g * y)."""
    y = forward(*inputs)
    y = y[0] if isinstance(y, tuple) else y
    g = rng.standard_normal(np.shape(y))

    def loss():
        out = forward(*inputs)
        out = out[0] if isinstance(out, tuple) else out
        return float(np.sum(g * out))

    got = backward(g, *inputs)
    got = got if isinstance(got, tuple) else (got,)
    for i, (x, dx) in enumerate(zip(inputs, got)):
        if dx is None:
            continue
        assert_close(dx, numerical_grad(loss, x), rtol=rtol, atol=atol, name=f"grad of input {i}")


def test_matmul_grad(ref, rng):
    for ta in (False, True):
        for tb in (False, True):
            a = rng.standard_normal((2, 4, 3) if not ta else (2, 3, 4))
            b = rng.standard_normal((3, 5) if not tb else (5, 3))

            def bwd(g, a, b):
                # d(op(a) @ op(b)): grads expressed through matmul itself
                da = (
                    ref.matmul(b, g, trans_a=tb, trans_b=True)
                    if ta
                    else ref.matmul(g, b, trans_b=not tb)
                )
                db = (
                    ref.matmul(a, g, trans_a=not ta)
                    if not tb
                    else ref.matmul(g, a, trans_a=True, trans_b=ta)
                )
                return da, db.sum(axis=0)

            check(lambda a, b: ref.matmul(a, b, trans_a=ta, trans_b=tb), bwd, [a, b], rng)


def test_linear_grad(ref, rng):
    x, w, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((5, 4)), rng.standard_normal(5)
    check(ref.linear_forward, lambda g, x, w, b: ref.linear_backward(g, x, w), [x, w, b], rng)


@pytest.mark.parametrize("causal", [False, True])
def test_softmax_grad(ref, rng, causal):
    x = rng.standard_normal((2, 4, 5))
    check(
        lambda x: ref.softmax_forward(x, scale=0.8, causal=causal),
        lambda g, x: ref.softmax_backward(
            g, ref.softmax_forward(x, scale=0.8, causal=causal), scale=0.8
        ),
        [x],
        rng,
    )


def test_layernorm_grad(ref, rng):
    x, gamma, beta = rng.standard_normal((3, 7)), rng.standard_normal(7), rng.standard_normal(7)

    def bwd(g, x, gamma, beta):
        _, mean, rstd = ref.layernorm_forward(x, gamma, beta)
        return ref.layernorm_backward(g, x, gamma, mean, rstd)

    check(lambda x, gm, bt: ref.layernorm_forward(x, gm, bt), bwd, [x, gamma, beta], rng)


def test_rmsnorm_grad(ref, rng):
    x, gamma = rng.standard_normal((3, 7)), rng.standard_normal(7)

    def bwd(g, x, gamma):
        _, rstd = ref.rmsnorm_forward(x, gamma)
        return ref.rmsnorm_backward(g, x, gamma, rstd)

    check(lambda x, gm: ref.rmsnorm_forward(x, gm), bwd, [x, gamma], rng)


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_grad(ref, rng, approximate):
    x = 3 * rng.standard_normal((4, 5))
    check(
        lambda x: ref.gelu_forward(x, approximate=approximate),
        lambda g, x: ref.gelu_backward(g, x, approximate=approximate),
        [x],
        rng,
    )


def test_relu_silu_swiglu_grads(ref, rng):
    x = rng.standard_normal((4, 5))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from relu's kink
    check(ref.relu_forward, lambda g, x: ref.relu_backward(g, x), [x], rng)
    check(ref.silu_forward, lambda g, x: ref.silu_backward(g, x), [x], rng)
    gate, up = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    check(ref.swiglu_forward, lambda g, a, b: ref.swiglu_backward(g, a, b), [gate, up], rng)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_grad(ref, rng, smoothing):
    logits = rng.standard_normal((6, 5))
    targets = np.array([0, 4, -100, 2, 2, 1])
    kw = dict(ignore_index=-100, label_smoothing=smoothing)

    def loss():
        return ref.cross_entropy_forward(logits, targets, **kw)[0]

    _, lse = ref.cross_entropy_forward(logits, targets, **kw)
    got = ref.cross_entropy_backward(logits, targets, lse, grad=1.0, **kw)
    assert_close(got, numerical_grad(loss, logits), rtol=1e-5, atol=1e-8)


def test_embedding_grad(ref, rng):
    w = rng.standard_normal((6, 3))
    ids = np.array([[0, 5, 5], [2, 0, 1]])
    check(
        lambda w: ref.embedding_forward(w, ids),
        lambda g, w: ref.embedding_backward(g, ids, 6),
        [w],
        rng,
    )


def test_rope_grad(ref, rng):
    x = rng.standard_normal((2, 5, 6))
    theta = rng.standard_normal((5, 3))
    cos, sin = np.cos(theta), np.sin(theta)
    check(
        lambda x: ref.rope_forward(x, cos, sin),
        lambda g, x: ref.rope_backward(g, cos, sin),
        [x],
        rng,
    )


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("groups", [1, 2])
def test_attention_grad(ref, rng, causal, groups):
    q = rng.standard_normal((1, 2 * groups, 4, 3))
    k = rng.standard_normal((1, 2, 5, 3))
    v = rng.standard_normal((1, 2, 5, 3))
    mask = np.array([[False, True, False, False, False]])
    kw = dict(causal=causal, key_padding_mask=mask, scale=0.6)

    def bwd(g, q, k, v):
        o, lse = ref.attention_forward(q, k, v, **kw)
        return ref.attention_backward(g, q, k, v, o, lse, **kw)

    check(lambda q, k, v: ref.attention_forward(q, k, v, **kw), bwd, [q, k, v], rng)


def test_reference_forwards_match_definitions(ref, rng):
    """The reference's forwards against direct, loop-level definitions."""
    x = rng.standard_normal((3, 4))
    e = np.exp(x - x.max(1, keepdims=True))
    assert_close(ref.softmax_forward(x), e / e.sum(1, keepdims=True))
    y, _mean, _rstd = ref.layernorm_forward(x, np.ones(4), np.zeros(4), eps=0.0)
    assert_close(y.mean(1), np.zeros(3), atol=1e-12)
    assert_close(y.std(1), np.ones(3))
    q, k, v = (rng.standard_normal((1, 1, 3, 2)) for _ in range(3))
    o, lse = ref.attention_forward(q, k, v, causal=True, scale=1.0)
    for i in range(3):
        s = np.array([q[0, 0, i] @ k[0, 0, j] for j in range(i + 1)])
        p = np.exp(s) / np.exp(s).sum()
        assert_close(o[0, 0, i], p @ v[0, 0, : i + 1])
        assert_close(lse[0, 0, i], np.log(np.exp(s).sum()))
    z = rng.standard_normal((2, 3))
    loss, _ = ref.cross_entropy_forward(z, np.array([1, 2]), label_smoothing=0.3)
    lp = z - np.log(np.exp(z).sum(1, keepdims=True))
    want = np.mean([-(0.7 * lp[0, 1] + 0.3 * lp[0].mean()), -(0.7 * lp[1, 2] + 0.3 * lp[1].mean())])
    assert_close(loss, want)
    p, m, vv = np.array([1.0]), np.zeros(1), np.zeros(1)
    ref.adamw_step(p, np.array([0.5]), m, vv, lr=0.1, weight_decay=0.5, step=1)
    # step 1: m̂ = g, v̂ = g², so the update is lr·sign(g) after decay 1 - lr·wd
    assert_close(p, [1.0 * (1 - 0.05) - 0.1 * 0.5 / (0.5 + 1e-8)])
