"""Generation: KV cache against full recomputation, batched prompts of different
lengths, stopping, seeded sampling, teacher-forced scoring and the errors."""

import numpy as np
import pytest
from devices import HOST_BACKENDS

from ferroformer import backend
from ferroformer.generate import KVCache, left_pad
from ferroformer.models import GPT, Llama
from ferroformer.nn import MultiHeadAttention, RotaryEmbedding

from helpers import assert_close
from model_helpers import small_transformer

BACKENDS = HOST_BACKENDS


def gpt(be, dtype=np.float32, **kw):
    cfg = dict(vocab_size=61, max_seq_len=48, d_model=32, n_heads=4, n_layers=2)
    cfg.update(kw)
    return GPT(**cfg, backend=be, dtype=dtype, rng=1)


def llama(be, dtype=np.float32, **kw):
    cfg = dict(vocab_size=61, max_seq_len=48, d_model=48, n_heads=6, n_kv_heads=2, n_layers=2)
    cfg.update(kw)
    return Llama(**cfg, backend=be, dtype=dtype, rng=2)


def seq2seq(be, dtype=np.float32):
    return small_transformer(
        23, 29, n_decoder_layers=2, max_seq_len=40, pad_id=0, backend=be, dtype=dtype, rng=3
    )


DECODERS = [gpt, llama]
PROMPTS = [[5, 9, 3, 17, 2, 44, 8], [11, 4], [7], [30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40]]


def host(x):
    return np.asarray(x.get() if hasattr(x, "get") else x)


# -- the cache reproduces full recomputation ------------------------------------------
@pytest.mark.parametrize("make", DECODERS)
def test_cached_logits_match_full_forward_float64(make):
    """Prompt then one token at a time through the cache: every step's logits equal
    the full forward's logits at that position (float64 numpy, tight)."""
    m = make("numpy", np.float64)
    m.eval()
    ids = np.random.default_rng(0).integers(0, 61, (3, 13))
    full = m(ids)
    cache = m.new_cache(3, 13)
    got = [m(ids[:, :6], cache=cache)]
    for t in range(6, 13):
        got.append(m(ids[:, t : t + 1], cache=cache))
    assert len(cache) == 13
    assert_close(np.concatenate(got, axis=1), full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("make", DECODERS)
def test_cached_logits_match_full_forward(be, make):
    m = make(be)
    m.eval()
    ids = np.random.default_rng(1).integers(0, 61, (2, 29))
    full = host(m(m.ops.asarray(ids)))
    cache = m.new_cache(2, 40)
    steps = [host(m(m.ops.asarray(ids[:, :1]), cache=cache))]
    for t in range(1, 29):
        steps.append(host(m(m.ops.asarray(ids[:, t : t + 1]), cache=cache)))
    assert_close(np.concatenate(steps, axis=1), full, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("make", DECODERS)
def test_generate_with_and_without_cache_same_tokens(be, make):
    m = make(be)
    for kw in (
        dict(),
        dict(temperature=1.0, top_k=20, seed=7),
        dict(temperature=0.7, top_p=0.9, seed=3),
    ):
        a = m.generate(PROMPTS, max_new_tokens=12, **kw)
        b = m.generate(PROMPTS, max_new_tokens=12, use_cache=False, **kw)
        assert a.shape == (4, 12) and a.dtype == np.int64
        np.testing.assert_array_equal(a, b, err_msg=str(kw))


@pytest.mark.parametrize("be", BACKENDS)
def test_seq2seq_generate_with_and_without_cache(be):
    m = seq2seq(be)
    src = np.array([[3, 4, 5, 6, 7], [8, 9, 10, 0, 0], [12, 0, 0, 0, 0]])
    for kw in (dict(), dict(temperature=1.0, top_p=0.8, seed=1)):
        a = m.generate(src, max_len=10, bos_id=1, **kw)
        b = m.generate(src, max_len=10, bos_id=1, use_cache=False, **kw)
        assert a.shape == (3, 10)
        np.testing.assert_array_equal(a, b)
    # each source alone (its padding dropped) decodes to the same tokens
    a = m.generate(src, max_len=10, bos_id=1)
    for i, n in enumerate([5, 3, 1]):
        np.testing.assert_array_equal(
            m.generate(src[i : i + 1, :n], max_len=10, bos_id=1), a[i : i + 1]
        )


@pytest.mark.parametrize("be", BACKENDS)
def test_seq2seq_cached_logits_and_cross_kv_once(be):
    m = seq2seq(be)
    m.eval()
    src = m.ops.asarray(np.array([[3, 4, 5, 6, 7], [8, 9, 10, 0, 0]]))
    tgt = np.array([[1, 5, 6, 7, 8, 9], [1, 2, 3, 4, 5, 6]])
    calls = []
    for blk in m.decoder:
        fwd = blk.cross_attn.kv.forward
        blk.cross_attn.kv.forward = lambda x, _f=fwd: (calls.append(1), _f(x))[1]
    full = host(m(src, m.ops.asarray(tgt)))
    calls.clear()
    memory = m.encode(src)
    cache = m.new_cache(2, 8)
    steps = [
        host(m.decode(m.ops.asarray(tgt[:, t : t + 1]), memory, src=src, cache=cache))
        for t in range(6)
    ]
    assert len(calls) == len(m.decoder), "cross-attention K/V must be computed once per layer"
    assert_close(np.concatenate(steps, axis=1), full, rtol=2e-4, atol=2e-5)


# -- batched prompts of different lengths ------------------------------------------
@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("make", DECODERS)
def test_batched_prompts_generate_what_each_alone_does(be, make):
    m = make(be)
    batch = m.generate(PROMPTS, max_new_tokens=10)
    for i, p in enumerate(PROMPTS):
        np.testing.assert_array_equal(
            batch[i], m.generate([p], max_new_tokens=10)[0], err_msg=f"prompt {i}"
        )


@pytest.mark.parametrize("make", DECODERS)
def test_left_padded_logits_match_unpadded(make):
    """The last-position logits of a left-padded row equal those of the row alone."""
    m = make("numpy", np.float64)
    m.eval()
    ids, pad = left_pad(PROMPTS)
    cache = m.new_cache(len(PROMPTS), ids.shape[1] + 1, pad=pad)
    batched = m(ids, cache=cache, last_only=True)
    nxt = np.array([[3], [4], [5], [6]])
    after = m(nxt, cache=cache)
    for i, p in enumerate(PROMPTS):
        alone = m(np.array([[*p, int(nxt[i, 0])]]))
        assert_close(batched[i, -1], alone[0, -2], rtol=1e-10, atol=1e-10)
        assert_close(after[i, -1], alone[0, -1], rtol=1e-10, atol=1e-10)


def test_left_pad():
    ids, pad = left_pad([[1, 2, 3], [4]], pad_id=9)
    np.testing.assert_array_equal(ids, [[1, 2, 3], [9, 9, 4]])
    np.testing.assert_array_equal(pad, [0, 2])
    ids, pad = left_pad(np.array([[1, 2], [3, 4]]))
    assert pad.tolist() == [0, 0] and ids.dtype == np.int64


# -- stopping, sampling ------------------------------------------------------------------
def test_eos_stops_rows_and_the_loop():
    m = gpt("numpy")
    free = m.generate(PROMPTS, max_new_tokens=12)
    eos = int(free[1, 2])  # row 1 emits this at step 2 (maybe others earlier)
    out = m.generate(PROMPTS, max_new_tokens=12, eos_id=eos)
    for row, ref in zip(out, free):
        hits = np.flatnonzero(ref == eos)
        if hits.size:
            k = hits[0]
            np.testing.assert_array_equal(row[: k + 1], ref[: k + 1])
            assert (row[k:] == eos).all()
        else:
            np.testing.assert_array_equal(row, ref[: row.size])
    if all((r == eos).any() for r in free):
        assert out.shape[1] == max(np.flatnonzero(r == eos)[0] for r in free) + 1
    one = m.generate([PROMPTS[1]], max_new_tokens=12, eos_id=eos)
    assert one.shape[1] == np.flatnonzero(free[1] == eos)[0] + 1 and one[0, -1] == eos


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    m = llama("numpy")
    a = m.generate(PROMPTS, max_new_tokens=15, temperature=1.5, seed=11)
    b = m.generate(PROMPTS, max_new_tokens=15, temperature=1.5, seed=11)
    c = m.generate(PROMPTS, max_new_tokens=15, temperature=1.5, seed=12)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    np.testing.assert_array_equal(
        m.generate(PROMPTS, max_new_tokens=8, temperature=2.0, top_k=1, seed=0),
        m.generate(PROMPTS, max_new_tokens=8),
    )
    # a tiny nucleus keeps only the top token too
    np.testing.assert_array_equal(
        m.generate(PROMPTS, max_new_tokens=8, temperature=1.0, top_p=1e-9, seed=0),
        m.generate(PROMPTS, max_new_tokens=8),
    )


def test_callback_sees_each_step():
    m = gpt("numpy")
    seen = []
    out = m.generate(PROMPTS, max_new_tokens=6, callback=seen.append)
    assert len(seen) == 6
    np.testing.assert_array_equal(np.stack(seen, axis=1), out)
    s2s, steps = seq2seq("numpy"), []
    out = s2s.generate(np.array([[3, 4, 5]]), max_len=4, bos_id=1, callback=steps.append)
    np.testing.assert_array_equal(np.stack(steps, axis=1), out)


def test_generate_restores_training_mode():
    m = gpt("numpy")
    m.train()
    m.generate([[1, 2]], max_new_tokens=2)
    assert m.training


# -- scoring -----------------------------------------------------------------------------
@pytest.mark.parametrize("be", BACKENDS)
def test_score_matches_log_softmax_and_greedy(be):
    m = gpt(be)
    prompt = np.array([[5, 9, 3], [1, 2, 4]])
    greedy = m.generate(prompt, max_new_tokens=6)
    lp = m.score(prompt, greedy)
    assert lp.shape == (2, 6) and lp.dtype == np.float64
    m.eval()
    logits = host(m(m.ops.asarray(np.concatenate([prompt, greedy], 1)))).astype(np.float64)
    z = logits - logits.max(-1, keepdims=True)
    ref = z - np.log(np.exp(z).sum(-1, keepdims=True))
    # greedy tokens are the most likely ones: their log p is the row maximum
    assert_close(lp, ref[:, 2:-1].max(-1), rtol=1e-5, atol=1e-5)
    # any other first token is less likely than the greedy one
    worse = (greedy + 1) % 61
    assert (m.score(prompt, worse)[:, 0] < lp[:, 0]).all()


def test_seq2seq_score():
    m = seq2seq("numpy", np.float64)
    src = np.array([[3, 4, 5], [6, 7, 8]])
    out = m.generate(src, max_len=5, bos_id=1)
    lp = m.score(src, out, bos_id=1)
    m.eval()
    inp = np.concatenate([np.ones((2, 1), np.int64), out[:, :-1]], 1)
    logits = m(src, inp)
    z = logits - logits.max(-1, keepdims=True)
    ref = z - np.log(np.exp(z).sum(-1, keepdims=True))
    assert_close(lp, ref.max(-1), rtol=1e-10, atol=1e-10)


# -- the attention layer with a cache: RoPE, ALiBi, weights -----------------------------
@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("kind", ["rope", "alibi"])
def test_attention_layer_cache_one_token_at_a_time(be, kind):
    rope = RotaryEmbedding(8, 32) if kind == "rope" else None
    attn = MultiHeadAttention(32, 4, 2, causal=True, rope=rope, alibi=kind == "alibi", rng=0)
    attn.to(be)
    attn.eval()
    x = np.random.default_rng(0).standard_normal((2, 9, 32)).astype(np.float32)
    full = host(attn(attn.ops.asarray(x)))
    cache = KVCache(attn.ops, [attn], 2, 16)
    steps = []
    for t in range(9):
        steps.append(host(attn(attn.ops.asarray(x[:, t : t + 1]), cache=cache.layer(0))))
        cache.advance(1)
    assert_close(np.concatenate(steps, 1), full, rtol=1e-4, atol=1e-5)


def test_attention_weights_through_the_cache():
    attn = MultiHeadAttention(16, 2, causal=True, rng=0)
    attn.eval()
    attn.keep_weights = True
    x = np.random.default_rng(0).standard_normal((1, 5, 16)).astype(np.float32)
    attn(x)
    full = attn.weights
    cache = KVCache(attn.ops, [attn], 1, 8)
    attn(x[:, :4], cache=cache.layer(0))
    cache.advance(4)
    attn(x[:, 4:], cache=cache.layer(0))
    assert attn.weights.shape == (1, 2, 1, 5)
    assert_close(attn.weights[:, :, 0], full[:, :, 4], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("be", BACKENDS)
def test_attention_kv_len_reads_only_the_used_rows(be):
    """The op contract's kv_len: rows past kv_len (here NaN) and their mask columns
    are never read."""
    ops = backend(be)
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 4, 3, 16)).astype(np.float32)
    k = rng.standard_normal((2, 2, 11, 16)).astype(np.float32)
    v = rng.standard_normal((2, 2, 11, 16)).astype(np.float32)
    mask = np.zeros((2, 11), bool)
    mask[1, :2] = True
    kb, vb = (
        np.full((2, 2, 20, 16), np.nan, np.float32),
        np.full((2, 2, 20, 16), np.nan, np.float32),
    )
    kb[:, :, :11], vb[:, :, :11] = k, v
    mb = np.ones((2, 20), bool)
    mb[:, :11] = mask
    want, wl = ops.attention_forward(
        *map(ops.asarray, (q, k, v)), causal=True, key_padding_mask=ops.asarray(mask)
    )
    got, gl = ops.attention_forward(
        *map(ops.asarray, (q, kb, vb)), causal=True, key_padding_mask=ops.asarray(mb), kv_len=11
    )
    np.testing.assert_array_equal(host(got), host(want))
    np.testing.assert_array_equal(host(gl), host(wl))
    with pytest.raises(ValueError, match="kv_len"):
        ops.attention_forward(*map(ops.asarray, (q, kb, vb)), kv_len=21)


# -- errors -------------------------------------------------------------------------------
def test_generate_errors():
    m = gpt("numpy")
    m.generate([[1] * 40], max_new_tokens=9)  # 48 positions fed: fits max_seq_len 48 exactly
    with pytest.raises(ValueError, match="max_seq_len"):
        m.generate([[1] * 40], max_new_tokens=10)
    with pytest.raises(ValueError, match="max_new_tokens"):
        m.generate([[1]], max_new_tokens=0)
    with pytest.raises(ValueError, match="at least one token"):
        m.generate([[1], []], max_new_tokens=2)
    with pytest.raises(IndexError, match="prompt ids"):
        m.generate([[1, 61]], max_new_tokens=2)
    with pytest.raises(TypeError, match="integers"):
        m.generate(np.zeros((1, 3)), max_new_tokens=2)
    with pytest.raises(ValueError, match="temperature"):
        m.generate([[1]], max_new_tokens=2, temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        m.generate([[1]], max_new_tokens=2, temperature=1, top_p=0)
    cache = m.new_cache(1, 4)
    m.train()
    with pytest.raises(ValueError, match="eval"):
        m(np.array([[1]]), cache=cache)
    m.eval()
    m(np.array([[1, 2, 3, 4]]), cache=cache)
    with pytest.raises(ValueError, match="capacity"):
        m(np.array([[1]]), cache=cache)
    with pytest.raises(ValueError, match="pad"):
        m.new_cache(2, 4, pad=[0, 4])
    s = seq2seq("numpy")
    s.generate(np.array([[3, 4]]), max_len=40, bos_id=1)  # BOS + 39 fed: fits max_seq_len 40
    with pytest.raises(ValueError, match="max_seq_len"):
        s.generate(np.array([[3, 4]]), max_len=41, bos_id=1)


# -- the cupy backend's host side, through the CUDA emulator ---------------------------
def _host_unavailable():
    import cuda_host

    return cuda_host.unavailable()


@pytest.mark.skipif(_host_unavailable() is not None, reason=str(_host_unavailable()))
def test_generate_on_emulated_cupy_backend():
    """KV-cache generation through the cupy backend's Python side (flash kernels run
    from their CUDA sources on the host) matches the numpy backend's tokens."""
    import cuda_emulator

    ops = cuda_emulator.backend()
    for make in DECODERS:
        ref = make("numpy", n_layers=1)
        m = make("numpy", n_layers=1)
        m.to(ops)
        prompts = [[1, 2, 3, 4], [5, 6]]
        want = ref.generate(prompts, 5)
        np.testing.assert_array_equal(m.generate(prompts, 5), want)
        np.testing.assert_array_equal(m.generate(prompts, 5, use_cache=False), want)
