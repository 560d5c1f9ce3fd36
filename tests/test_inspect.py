"""ferroformer.inspect: attention probabilities of any layer, their entropy, and
nearest neighbours in the embedding table."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ferroformer import available_backends
from ferroformer.inspect import (
    attention_entropy,
    attention_module,
    attention_weights,
    embedding_matrix,
    nearest_neighbours,
)
from ferroformer.models import BERT, GPT, Llama

from helpers import assert_close
from model_helpers import small_transformer

V, T = 24, 7
BACKENDS = [b for b in ("numpy", "rust") if b in available_backends()]


def ids(b=2, t=T, seed=0):
    return np.random.default_rng(seed).integers(0, V, (b, t))


def gpt(backend=None, **kw):
    return GPT(V, max_seq_len=16, d_model=32, n_heads=4, n_layers=3, rng=0, backend=backend, **kw)


def transformer():
    return small_transformer(V, V, rng=0)


def zero_queries(attn):
    """q = 0: every visible key gets the same score, so attention is uniform."""
    hd = attn.n_heads * attn.head_dim
    lin = attn.q if attn.cross else attn.qkv
    w = np.array(lin.weight.data)
    w[:hd] = 0
    lin.weight.data = attn.ops.asarray(w)
    if lin.bias is not None:
        b = np.array(lin.bias.data)
        b[:hd] = 0
        lin.bias.data = attn.ops.asarray(b)


# -- attention_weights --------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_gpt_weights_are_causal_distributions(backend):
    m = gpt(backend)
    w = attention_weights(m, ids(), layer=1)
    assert w.shape == (2, 4, T, T) and w.dtype == np.float32 and isinstance(w, np.ndarray)
    assert_close(w.sum(-1), 1.0, atol=1e-5, rtol=1e-7)
    assert (w >= 0).all()
    assert np.abs(np.triu(w, 1)).max() == 0.0  # no query sees a later key
    assert not np.allclose(w[..., 1, 0], 0.5)  # the random init is not uniform


def test_backends_agree():
    if len(BACKENDS) < 2:
        pytest.skip("needs the numpy and rust backends")
    a = attention_weights(gpt("numpy"), ids(), layer=2)
    b = attention_weights(gpt("rust"), ids(), layer=2)
    assert_close(a, b, atol=1e-5, rtol=1e-7)


def test_head_selects_one_head_and_negative_indices_count_from_the_end():
    m = gpt()
    x = ids()
    full = attention_weights(m, x, layer=2)
    np.testing.assert_array_equal(attention_weights(m, x, layer=2, head=3), full[:, 3])
    np.testing.assert_array_equal(attention_weights(m, x, layer=-1, head=-1), full[:, 3])
    assert not np.allclose(attention_weights(m, x, layer=0), full)  # a different layer


def test_uniform_attention_when_queries_are_zero():
    m = gpt()
    zero_queries(m.blocks[0].attn)
    w = attention_weights(m, ids(), layer=0)
    want = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]
    assert_close(w, np.broadcast_to(want, w.shape), atol=1e-6, rtol=1e-7)
    ent = attention_entropy(w)
    assert ent.shape == (2, 4)
    assert_close(ent, np.mean(np.log(np.arange(1, T + 1))), atol=1e-5, rtol=1e-7)


def test_mode_and_flags_are_restored():
    m = gpt()
    attn = m.blocks[1].attn
    assert m.training
    attention_weights(m, ids(), layer=1)
    assert m.training and all(mod.training for mod in m.modules())
    assert attn.keep_weights is False and attn.weights is None
    m.eval()
    attn.keep_weights = True
    attention_weights(m, ids(), layer=1)
    assert not m.training and attn.keep_weights is True
    m2 = gpt()
    with pytest.raises(IndexError):  # token id out of range: forward fails
        attention_weights(m2, np.full((1, 3), V + 5), layer=0)
    assert m2.training and m2.blocks[0].attn.keep_weights is False


def test_bert_padding_columns_get_no_weight():
    m = BERT(V, max_seq_len=16, d_model=32, n_heads=4, n_layers=2, dropout=0.0, rng=0)
    zero_queries(m.blocks[1].attn)
    mask = np.zeros((2, T), bool)
    mask[0, 5:] = True
    w = attention_weights(m, ids(), layer=1, key_padding_mask=mask)
    assert w.shape == (2, 4, T, T)
    assert_close(w[0, ..., :5], 0.2, atol=1e-6, rtol=1e-7)
    assert_close(w[0, ..., 5:], 0.0, atol=1e-7, rtol=1e-7)
    assert_close(w[1], 1.0 / T, atol=1e-6, rtol=1e-7)  # not causal, nothing masked
    ent = attention_entropy(w)
    assert_close(ent[0], math.log(5), atol=1e-5, rtol=1e-7)
    assert_close(ent[1], math.log(T), atol=1e-5, rtol=1e-7)


def test_llama_gqa_heads():
    m = Llama(V, max_seq_len=16, d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, rng=0)
    w = attention_weights(m, ids(), layer=1)
    assert w.shape == (2, 4, T, T)
    assert_close(w.sum(-1), 1.0, atol=1e-5, rtol=1e-7)
    assert np.abs(np.triu(w, 1)).max() == 0.0


def test_transformer_encoder_decoder_and_cross():
    m = transformer()
    src, tgt = ids(t=6), ids(t=4, seed=1)
    mask = np.zeros((2, 6), bool)
    mask[1, 4:] = True
    enc = attention_weights(m, src, tgt, layer=1, src_key_padding_mask=mask)
    assert enc.shape == (2, 4, 6, 6)
    assert_close(enc[1, ..., 4:], 0.0, atol=1e-7, rtol=1e-7)
    assert (enc[0] > 0).all()  # the encoder is not causal
    dec = attention_weights(m, src, tgt, layer=2, stack="decoder")
    assert dec.shape == (2, 4, 4, 4) and np.abs(np.triu(dec, 1)).max() == 0.0
    cross = attention_weights(m, src, tgt, layer=0, kind="cross", src_key_padding_mask=mask)
    assert cross.shape == (2, 4, 4, 6)
    assert_close(cross.sum(-1), 1.0, atol=1e-5, rtol=1e-7)
    assert_close(cross[1, ..., 4:], 0.0, atol=1e-7, rtol=1e-7)
    assert attention_module(m, 0, kind="cross") is m.decoder[0].cross_attn
    assert attention_module(m, 1, stack="decoder") is m.decoder[1].attn
    assert attention_module(m, 1) is m.encoder[1].attn


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda m: attention_weights(m, ids(), layer=3),
            r"layer 3 is out of range .* 3 layers .*0\.\.2",
        ),
        (lambda m: attention_weights(m, ids(), layer=-4), "out of range"),
        (
            lambda m: attention_weights(m, ids(), layer=0, head=4),
            r"head 4 is out of range for 4 heads",
        ),
        (lambda m: attention_weights(m, ids(), layer=0, kind="cross"), "no cross-attention"),
        (lambda m: attention_weights(m, ids(), layer=0, kind="both"), "kind must be one of"),
        (lambda m: attention_weights(m, ids(), layer=0, stack="decoder"), "stack applies to"),
        (lambda m: attention_weights(m, ids(), layer="1"), "layer must be an int"),
    ],
)
def test_bad_arguments_are_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(gpt())


def test_transformer_bad_stack_and_layer():
    m = transformer()
    src, tgt = ids(t=6), ids(t=4)
    with pytest.raises(ValueError, match="encoder has no cross-attention"):
        attention_weights(m, src, tgt, layer=0, kind="cross", stack="encoder")
    with pytest.raises(ValueError, match=r"2 layers of Transformer encoder"):
        attention_weights(m, src, tgt, layer=2)
    with pytest.raises(ValueError, match="stack must be one of"):
        attention_weights(m, src, tgt, layer=0, stack="middle")


# -- attention_entropy -----------------------------------------------------------------------
def test_entropy_of_uniform_one_hot_and_reductions():
    uni = np.full((3, 5, 8), 1 / 8)
    assert_close(attention_entropy(uni), [math.log(8)] * 3, rtol=1e-7, atol=0)
    one = np.zeros((2, 3, 4, 6))
    one[..., 2] = 1
    assert_close(attention_entropy(one), np.zeros((2, 3)), atol=0, rtol=1e-7)
    mixed = np.array([[0.5, 0.5, 0, 0], [1, 0, 0, 0]])
    assert attention_entropy(mixed) == pytest.approx(math.log(2) / 2)


def test_entropy_ignores_all_zero_rows():
    w = np.zeros((2, 3, 4))
    w[0, :2] = 1 / 4  # two live rows, one masked row
    out = attention_entropy(w)
    assert out.shape == (2,)
    assert out[0] == pytest.approx(math.log(4))
    assert np.isnan(out[1])  # nothing to average
    with pytest.raises(ValueError):
        attention_entropy(np.array([-0.1, 1.1]))


# -- nearest_neighbours ------------------------------------------------------------------------
def set_row(emb, dst, src, scale=1.0):
    w = np.array(emb.weight.data)
    w[dst] = scale * w[src]
    emb.weight.data = emb.ops.asarray(w)


def test_a_copied_row_is_the_nearest_neighbour():
    m = gpt()
    set_row(m.wte, 17, 3, scale=2.5)  # same direction: cosine 1, not euclidean 0
    set_row(m.wte, 9, 3)
    got, sims = nearest_neighbours(m, 3, k=4)
    assert list(got[:2]) == [9, 17] and 3 not in got  # ties by lower id
    assert_close(sims[:2], 1.0, atol=1e-6, rtol=1e-7)
    assert (np.diff(sims) <= 1e-12).all() and sims[2] < 0.999
    got, dist = nearest_neighbours(m, 3, k=3, metric="euclidean")
    assert got[0] == 9 and dist[0] == 0.0 and (np.diff(dist) >= 0).all()
    got, _ = nearest_neighbours(m, 3, k=2, metric="dot")
    assert got[0] == 17  # the longest aligned row


def test_neighbours_against_brute_force():
    e = np.random.default_rng(1).normal(size=(30, 8))
    got, sims = nearest_neighbours(e, 5, k=29)
    n = e / np.linalg.norm(e, axis=1, keepdims=True)
    want = n @ n[5]
    assert sorted(got) == [i for i in range(30) if i != 5]
    assert_close(sims, want[got], atol=1e-12, rtol=1e-7)
    assert_close(sims, np.sort(np.delete(want, 5))[::-1], atol=1e-12, rtol=1e-7)


def test_embedding_tables_by_model():
    llama = Llama(V, max_seq_len=16, d_model=32, n_heads=4, n_layers=1, rng=0)
    bert = BERT(V, max_seq_len=16, d_model=32, n_heads=4, n_layers=1, rng=0)
    tr = transformer()
    np.testing.assert_array_equal(embedding_matrix(llama), np.asarray(llama.tok_emb.weight.data))
    np.testing.assert_array_equal(embedding_matrix(bert), np.asarray(bert.tok_emb.weight.data))
    np.testing.assert_array_equal(embedding_matrix(tr), np.asarray(tr.src_emb.weight.data))
    np.testing.assert_array_equal(embedding_matrix(tr, "tgt"), np.asarray(tr.tgt_emb.weight.data))
    set_row(tr.tgt_emb, 20, 4)
    assert nearest_neighbours(tr, 4, k=1, table="tgt")[0][0] == 20
    assert nearest_neighbours(tr, 4, k=1, table="src")[0][0] != 20


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(token_id=V), "token_id 24 is out of range"),
        (dict(token_id=0, k=0), "k must be in 1..23"),
        (dict(token_id=0, k=V), "k must be in"),
        (dict(token_id=0, metric="manhattan"), "metric must be one of"),
        (dict(token_id=0, table="tgt"), "applies to the Transformer only"),
    ],
)
def test_neighbour_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        nearest_neighbours(gpt(), **kw)
