"""Every layer's backward by central finite differences in float64 on the numpy
backend, plus the Module API, the position tables, and activation recomputation."""

from __future__ import annotations

import math

import numpy as np
import pytest

import ferroformer as ff
from ferroformer import nn

from helpers import assert_close
from model_helpers import check_grads, rust_or_skip


def f64(module):
    return module.to("numpy", dtype=np.float64)


# -- Module API ------------------------------------------------------------------
def test_module_registers_names_and_ties():
    blk = nn.DecoderBlock(8, 2, 16, rng=0)
    names = [n for n, _ in blk.named_parameters()]
    assert names[:4] == ["ln1.weight", "ln1.bias", "attn.qkv.weight", "attn.qkv.bias"]
    assert "cross_attn.kv.weight" in names and names[-1] == "ff.fc2.bias"
    lin = nn.Linear(3, 4)
    lin.other = lin.weight  # a tied parameter appears once
    assert [n for n, _ in lin.named_parameters()] == ["weight", "bias"]


def test_state_dict_round_trip_and_errors(rng):
    a, b = nn.FeedForward(4, 8, rng=1), nn.FeedForward(4, 8, rng=2)
    b.load_state_dict(a.state_dict())
    x = rng.standard_normal((2, 4)).astype(np.float32)
    assert_close(b(x), a(x))
    bad = dict(a.state_dict())
    bad["fc1.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match="fc1.weight"):
        b.load_state_dict(bad)
    del bad["fc1.weight"]
    with pytest.raises(ValueError, match="missing"):
        b.load_state_dict(bad)


def test_zero_grad_train_eval_and_to(rng):
    lin = nn.Linear(3, 2, rng=0)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    lin(x)
    lin.backward(np.ones((5, 2), np.float32))
    assert lin.weight.grad is not None
    lin.zero_grad()
    assert lin.weight.grad is None
    lin.eval()
    lin(x)
    assert lin.cache is None  # eval keeps nothing for backward
    with pytest.raises(RuntimeError, match="no forward"):
        lin.backward(np.ones((5, 2), np.float32))
    lin.train().to("numpy", dtype=np.float64)
    assert lin.weight.data.dtype == np.float64 and lin.dtype == np.float64


def test_backward_accumulates(rng):
    lin = f64(nn.Linear(3, 2, rng=0))
    x = rng.standard_normal((4, 3))
    g = rng.standard_normal((4, 2))
    lin(x)
    lin.backward(g)
    once = lin.weight.grad.copy()
    lin(x)
    lin.backward(g)
    assert_close(lin.weight.grad, 2 * once)


# -- layers by finite differences ----------------------------------------------------
@pytest.mark.parametrize("bias", [True, False])
def test_linear_grad(rng, bias):
    x = rng.standard_normal((2, 3, 4))
    check_grads(f64(nn.Linear(4, 5, bias, rng=0)), [x], rng, wrt=[x])


def test_embedding_grad(rng):
    ids = np.array([[1, 3, 1], [0, 2, 3]])
    check_grads(f64(nn.Embedding(5, 4, scale=True, rng=0)), [ids], rng)


@pytest.mark.parametrize("norm", [nn.LayerNorm, nn.RMSNorm])
def test_norm_grad(rng, norm):
    x = rng.standard_normal((2, 3, 6))
    m = f64(norm(6))
    for p in m.parameters():
        p.data += rng.standard_normal(p.data.shape) * 0.1
    check_grads(m, [x], rng, wrt=[x])


def test_dropout_grad_and_statistics(rng):
    x = rng.standard_normal((4, 5))
    check_grads(f64(nn.Dropout(0.3, rng=0)), [x], rng, wrt=[x])
    d = nn.Dropout(0.25, rng=0)
    y = d(np.ones((200, 200), np.float32))
    assert abs(float((y == 0).mean()) - 0.25) < 0.01
    assert_close(np.unique(y), [0.0, 1 / 0.75])
    d.eval()
    assert d(x) is x
    a, b = nn.Dropout(0.5, rng=7), nn.Dropout(0.5, rng=7)
    assert_close(a(np.ones(50)), b(np.ones(50)))  # seeded: the same masks


def test_learned_positional_grad(rng):
    x = rng.standard_normal((2, 3, 4))
    check_grads(
        f64(nn.LearnedPositionalEmbedding(6, 4, rng=0)), [x], rng, wrt=[x], kwargs={"offset": 2}
    )
    with pytest.raises(ValueError, match="max_len"):
        nn.LearnedPositionalEmbedding(4, 4)(x, offset=2)


def test_sinusoidal_table():
    t = nn.sinusoidal_table(50, 8, dtype=np.float64)
    p, i = 7, 2
    assert_close(t[p, 2 * i], math.sin(p / 10000 ** (2 * i / 8)))
    assert_close(t[p, 2 * i + 1], math.cos(p / 10000 ** (2 * i / 8)))
    pe = f64(nn.SinusoidalPositionalEncoding(8, 50))
    x = np.zeros((1, 3, 8))
    assert_close(pe(x, offset=4)[0], t[4:7])


def test_rope_tables_and_grad(rng):
    cos, _sin = nn.rope_tables(10, 8, dtype=np.float64)
    assert_close(cos[3, 1], math.cos(3 * 10000 ** (-2 / 8)))
    rope = f64(nn.RotaryEmbedding(8, 10))
    x = rng.standard_normal((1, 2, 3, 8))
    y = rope.forward(x, offset=4)
    # adjacent pairs: (x0, x1) at position 4 rotated by angle 4 * theta_0 = 4
    assert_close(
        y[0, 0, 0, :2],
        [
            x[0, 0, 0, 0] * math.cos(4) - x[0, 0, 0, 1] * math.sin(4),
            x[0, 0, 0, 0] * math.sin(4) + x[0, 0, 0, 1] * math.cos(4),
        ],
    )
    assert_close(rope.backward(y, offset=4), x)  # a rotation: backward is its inverse
    # rotary attention scores depend only on relative positions
    q, k = rng.standard_normal((1, 1, 1, 8)), rng.standard_normal((1, 1, 1, 8))
    s1 = float((rope.forward(q, 5) * rope.forward(k, 2)).sum())
    s2 = float((rope.forward(q, 7) * rope.forward(k, 4)).sum())
    assert_close(s1, s2)


def test_alibi():
    assert_close(nn.alibi_slopes(8), [2.0 ** -(i + 1) for i in range(8)])
    s6 = nn.alibi_slopes(6)
    assert_close(s6[:4], [2.0 ** -(2 * (i + 1)) for i in range(4)])
    assert_close(s6[4:], [2.0**-1, 2.0**-3])
    b = nn.alibi_bias([0.5], 2, 4, dtype=np.float64)
    assert_close(b[0], [[-1.0, -0.5, 0.0, -0.5], [-1.5, -1.0, -0.5, 0.0]])


@pytest.mark.parametrize("activation", ["relu", "gelu", "swiglu"])
def test_feedforward_grad(rng, activation):
    x = rng.standard_normal((2, 3, 4))
    check_grads(f64(nn.FeedForward(4, 6, activation, rng=0)), [x], rng, wrt=[x])


def test_feedforward_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation"):
        nn.FeedForward(4, 6, "tanh")


# -- attention ------------------------------------------------------------------------
ATTENTION_CASES = {
    "mha": dict(n_heads=2),
    "causal-gqa": dict(n_heads=4, n_kv_heads=2, causal=True),
    "mqa-nobias": dict(n_heads=2, n_kv_heads=1, bias=False),
    "alibi-causal-gqa": dict(n_heads=4, n_kv_heads=2, causal=True, alibi=True),
    "alibi-padded": dict(n_heads=2, alibi=True),
}


@pytest.mark.parametrize("case", sorted(ATTENTION_CASES))
def test_self_attention_grad(rng, case):
    kw = ATTENTION_CASES[case]
    x = rng.standard_normal((2, 3, 8))
    mask = None if kw.get("causal") else np.array([[False, False, True], [False, False, False]])
    check_grads(
        f64(nn.MultiHeadAttention(8, rng=0, **kw)),
        [x],
        rng,
        wrt=[x],
        kwargs={"key_padding_mask": mask},
    )


def test_rope_attention_grad(rng):
    x = rng.standard_normal((1, 4, 8))
    m = f64(nn.MultiHeadAttention(8, 2, causal=True, rope=nn.RotaryEmbedding(4, 16), rng=0))
    check_grads(m, [x], rng, wrt=[x], kwargs={"offset": 3})


def test_cross_attention_grad(rng):
    x, mem = rng.standard_normal((2, 2, 8)), rng.standard_normal((2, 3, 8))
    mask = np.array([[False, True, True], [False, False, False]])
    m = f64(nn.MultiHeadAttention(8, 2, n_kv_heads=1, cross=True, rng=0))
    check_grads(m, [x], rng, wrt=[x, mem], kwargs={"memory": mem, "key_padding_mask": mask})


def test_padding_mask_hides_keys(rng):
    m = nn.MultiHeadAttention(8, 2, rng=0).eval()
    x = rng.standard_normal((1, 4, 8)).astype(np.float32)
    mask = np.array([[False, False, True, True]])
    y = m(x, key_padding_mask=mask)
    x2 = x.copy()
    x2[:, 2:] = rng.standard_normal((1, 2, 8))
    assert_close(m(x2, key_padding_mask=mask)[:, :2], y[:, :2], atol=1e-6)


def test_unfused_path_matches_fused(rng):
    """ALiBi with zero slopes is plain attention through matmul + softmax: the slow twin."""
    fused = f64(nn.MultiHeadAttention(8, 4, n_kv_heads=2, causal=True, rng=3))
    twin = f64(nn.MultiHeadAttention(8, 4, n_kv_heads=2, causal=True, alibi=True, rng=3))
    twin.slopes = np.zeros(4)
    x = rng.standard_normal((2, 5, 8))
    g = rng.standard_normal((2, 5, 8))
    assert_close(twin(x), fused(x), atol=1e-12)
    assert_close(twin.backward(g), fused.backward(g), atol=1e-12)
    for p, q in zip(twin.parameters(), fused.parameters()):
        assert_close(p.grad, q.grad, atol=1e-12)


def test_attention_rejects_bad_heads():
    with pytest.raises(ValueError, match="divisible"):
        nn.MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match="multiple"):
        nn.MultiHeadAttention(12, 4, n_kv_heads=3)


# -- blocks ----------------------------------------------------------------------------
@pytest.mark.parametrize("norm_first", [True, False])
def test_encoder_block_grad(rng, norm_first):
    x = rng.standard_normal((2, 3, 8))
    blk = f64(nn.EncoderBlock(8, 2, 12, norm_first=norm_first, dropout=0.2, rng=0))
    check_grads(
        blk,
        [x],
        rng,
        wrt=[x],
        kwargs={"key_padding_mask": np.array([[0, 0, 1], [0, 0, 0]], bool)},
        samples=6,
    )


def test_decoder_block_grad(rng):
    x, mem = rng.standard_normal((2, 3, 8)), rng.standard_normal((2, 4, 8))
    blk = f64(nn.DecoderBlock(8, 2, 12, norm_first=False, dropout=0.2, rng=0))
    check_grads(blk, [x], rng, wrt=[x, mem], kwargs={"memory": mem}, samples=6)


def test_llama_style_block_grad(rng):
    x = rng.standard_normal((1, 4, 8))
    blk = f64(
        nn.DecoderBlock(
            8,
            4,
            12,
            cross_attention=False,
            n_kv_heads=2,
            norm="rms",
            activation="swiglu",
            bias=False,
            rope=nn.RotaryEmbedding(2, 8),
            rng=0,
        )
    )
    check_grads(blk, [x], rng, wrt=[x], samples=6)


@pytest.mark.parametrize("cross", [False, True])
def test_checkpointing_same_grads_less_memory(rng, cross):
    kw = dict(cross_attention=cross, dropout=0.3, rng=5)
    plain = f64(nn.DecoderBlock(16, 2, 32, **kw))
    ckpt = f64(nn.DecoderBlock(16, 2, 32, checkpoint=True, **kw))
    x, mem = rng.standard_normal((2, 6, 16)), rng.standard_normal((2, 5, 16))
    g = rng.standard_normal((2, 6, 16))
    fwd = {"memory": mem} if cross else {}
    y1, y2 = plain(x, **fwd), ckpt(x, **fwd)
    assert_close(y2, y1, rtol=0, atol=0)
    assert ckpt.cache_nbytes() < plain.cache_nbytes() / 3
    d1, d2 = plain.backward(g), ckpt.backward(g)
    assert_close(d2, d1, rtol=0, atol=0)
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert_close(q.grad, p.grad, rtol=0, atol=0, name=name)
    assert ckpt.cache_nbytes() == 0
    assert plain.rng_states() == ckpt.rng_states()  # the next step draws the same masks


# -- backends agree --------------------------------------------------------------------------
def test_block_numpy_vs_rust(rng):
    rust = rust_or_skip()
    kw = dict(n_kv_heads=2, cross_attention=True, rng=4)
    ref = nn.DecoderBlock(16, 4, 32, **kw)
    fast = nn.DecoderBlock(16, 4, 32, **kw).to(rust)
    x = rng.standard_normal((2, 5, 16)).astype(np.float32)
    mem = rng.standard_normal((2, 7, 16)).astype(np.float32)
    g = rng.standard_normal((2, 5, 16)).astype(np.float32)
    mask = np.zeros((2, 7), bool)
    mask[0, 5:] = True
    assert_close(
        fast(x, memory=mem, memory_key_padding_mask=mask),
        ref(x, memory=mem, memory_key_padding_mask=mask),
        rtol=1e-4,
        atol=1e-5,
    )
    assert_close(fast.backward(g), ref.backward(g), rtol=1e-3, atol=1e-4)
    for (name, p), q in zip(ref.named_parameters(), fast.parameters()):
        assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-4, name=name)


def test_module_to_moves_to_every_backend(rng):
    for name in ff.available_backends():
        m = nn.Linear(3, 2, rng=0).to(name)
        assert m.ops.name == name
