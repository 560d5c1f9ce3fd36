"""Whole models: gradients by finite differences (float64, numpy), numpy vs rust
gradients and logits, configs that rebuild a model, masks, checkpointing and
greedy decoding."""

from __future__ import annotations

import numpy as np
import pytest

from ferroformer.models import BERT, GPT, MODELS, Llama, Transformer, greedy_complete, greedy_decode

from helpers import assert_close
from model_helpers import check_grads, rust_or_skip

V = 11


# each architecture at test size: its class, positional arguments and sizes
TINY = {
    "GPT": (GPT, (V,), dict(n_heads=2, n_layers=2)),
    "Llama": (Llama, (V,), dict(n_heads=4, n_kv_heads=2, n_layers=2, d_ff=12)),
    "BERT": (BERT, (V,), dict(n_heads=2, n_layers=2, d_ff=12)),
    "Transformer": (
        Transformer,
        (V, V + 2),
        dict(n_heads=2, n_encoder_layers=2, n_decoder_layers=2, d_ff=12),
    ),
}


def tiny(name, backend="numpy", dtype=np.float32, **kw):
    cls, args, sizes = TINY[name]
    return cls(*args, max_seq_len=8, d_model=8, **sizes, backend=backend, dtype=dtype, rng=0, **kw)


def inputs(name, rng):
    ids = rng.integers(0, V, (2, 5))
    if name == "Transformer":
        src = rng.integers(0, V, (2, 6))
        return [src, rng.integers(0, V + 2, (2, 4))], {"src_key_padding_mask": src == 0}
    if name == "BERT":
        mask = np.zeros((2, 5), bool)
        mask[1, 3:] = True
        return [ids], {"key_padding_mask": mask, "segment_ids": (ids > 5).astype(np.int64)}
    return [ids], {}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_gradients_by_finite_differences(name, rng):
    kw = {"dropout": 0.1} if name in ("GPT", "BERT", "Transformer") else {}
    model = tiny(name, dtype=np.float64, **kw)
    args, kwargs = inputs(name, rng)
    check_grads(model, args, rng, kwargs=kwargs, samples=3, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_numpy_vs_rust(name, rng):
    rust = rust_or_skip()
    ref, fast = tiny(name), tiny(name, backend=rust)
    args, kwargs = inputs(name, rng)
    y_ref, y_fast = ref(*args, **kwargs), fast(*args, **kwargs)
    assert_close(y_fast, y_ref, rtol=1e-4, atol=1e-5, name="logits")
    g = rng.standard_normal(y_ref.shape).astype(np.float32)
    ref.backward(g)
    fast.backward(g)
    for (pname, p), q in zip(ref.named_parameters(), fast.parameters()):
        assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-4, name=pname)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_config_rebuilds_the_model(name, rng):
    model = tiny(name)
    same = MODELS[name].from_config(model.config, backend="numpy", rng=0)
    args, kwargs = inputs(name, rng)
    model.eval(), same.eval()
    assert_close(same(*args, **kwargs), model(*args, **kwargs), rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown keys"):
        MODELS[name].from_config({**model.config, "n_wings": 2})


def test_parameter_names_and_shapes_as_documented():
    gpt = dict((n, p.shape) for n, p in tiny("GPT").named_parameters())
    assert gpt["wte.weight"] == (V, 8) and gpt["wpe.weight"] == (8, 8)
    assert gpt["blocks.1.attn.qkv.weight"] == (24, 8) and gpt["blocks.0.ff.fc1.weight"] == (32, 8)
    assert "head.weight" not in gpt  # tied to wte
    llama = dict((n, p.shape) for n, p in tiny("Llama").named_parameters())
    assert llama["blocks.0.attn.qkv.weight"] == ((4 + 2 * 2) * 2, 8)
    assert llama["blocks.0.ff.fc1.weight"] == (24, 8) and llama["lm_head.weight"] == (V, 8)
    assert not any(n.endswith("bias") for n in llama)
    bert = dict((n, p.shape) for n, p in tiny("BERT").named_parameters())
    assert bert["seg_emb.weight"] == (2, 8) and bert["decoder.bias"] == (V,)
    tr = dict((n, p.shape) for n, p in tiny("Transformer").named_parameters())
    assert tr["decoder.0.cross_attn.kv.weight"] == (16, 8) and tr["tgt_emb.weight"] == (V + 2, 8)


def test_transformer_respects_source_padding(rng):
    model = tiny("Transformer", pad_id=0).eval()
    src = np.array([[3, 4, 5, 0, 0, 0]])
    tgt = np.array([[1, 6, 7]])
    y = model(src, tgt)
    assert y.shape == (1, 3, V + 2)
    src2 = src.copy()
    src2[0, 3:] = 0
    model2 = tiny("Transformer").eval()  # no pad_id: an explicit mask instead
    mask = src == 0
    other = src.copy()
    other[0, 3:] = [9, 8, 7]
    assert_close(
        model2(other, tgt, src_key_padding_mask=mask),
        model2(src, tgt, src_key_padding_mask=mask),
        atol=1e-6,
    )
    assert not np.allclose(model2(other, tgt), model2(src, tgt))


@pytest.mark.parametrize("name", ["GPT", "Llama"])
def test_decoder_only_is_causal_and_offset_consistent(name, rng):
    model = tiny(name).eval()
    ids = rng.integers(0, V, (2, 6))
    full = model(ids)
    assert_close(model(ids[:, :4]), full[:, :4], atol=1e-5)  # a prefix does not see the future


@pytest.mark.parametrize("name", ["GPT", "Llama", "Transformer"])
def test_checkpointed_model_same_gradients(name, rng):
    kw = {"dropout": 0.2} if name != "Llama" else {}
    plain, ckpt = tiny(name, **kw), tiny(name, checkpoint=True, **kw)
    args, kwargs = inputs(name, rng)
    y1, y2 = plain(*args, **kwargs), ckpt(*args, **kwargs)
    assert_close(y2, y1, rtol=0, atol=0)
    assert ckpt.cache_nbytes() < plain.cache_nbytes()
    g = rng.standard_normal(y1.shape).astype(np.float32)
    plain.backward(g)
    ckpt.backward(g)
    for (pname, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert_close(q.grad, p.grad, rtol=0, atol=0, name=pname)


def test_greedy_decoding_shapes(rng):
    gpt = tiny("GPT")
    out = greedy_complete(gpt, rng.integers(0, V, (3, 2)), n_new=4)
    assert out.shape == (3, 4) and gpt.training
    tr = tiny("Transformer")
    out = greedy_decode(tr, rng.integers(3, V, (2, 5)), bos_id=1, eos_id=2, max_len=6)
    assert out.shape[0] == 2 and out.shape[1] <= 6
