"""Smoke tests of benches/bench_decode.py and benches/bench_pretrained.py on tiny
random models: the greedy cache driver gives what ``generate`` gives, and the
PyTorch peers (GPT-2, Llama with RoPE/GQA/SwiGLU, BERT with padding) compute
what ferroformer computes from the same weights (skipped without torch)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import ferroformer as ff
from ferroformer.models import BERT, GPT, Llama

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benches"))
import bench_decode as bd

from helpers import assert_close

pytestmark = pytest.mark.skipif(
    "rust" not in ff.available_backends(), reason="needs the rust backend"
)

TINY_LLAMA = dict(
    vocab_size=96,
    max_seq_len=64,
    d_model=64,
    n_heads=4,
    n_kv_heads=2,
    n_layers=2,
    rope_base=100000.0,
    tie_embeddings=True,
)


def _prompt(n, vocab, seed=1):
    return np.random.default_rng(seed).integers(0, vocab, n).tolist()


@pytest.mark.parametrize("cls, cfg", [(GPT, bd.TINY), (Llama, TINY_LLAMA)])
def test_greedy_driver_matches_generate(cls, cfg):
    model = cls(**cfg, backend="rust", rng=0)
    prompt = _prompt(12, cfg["vocab_size"])
    run = bd.greedy(bd.FerroDecoder(model), prompt, 6)
    assert run.tokens == model.generate([prompt], 6)[0].tolist()
    assert run.steps == 5


def _check_same(model, torch_decoder, vocab):
    prompt = _prompt(20, vocab)
    ours = bd.greedy(bd.FerroDecoder(model), prompt, 8, "rust")
    theirs = bd.greedy(torch_decoder, prompt, 8, "torch")
    assert ours.tokens == theirs.tokens
    assert_close(ours.prefill_logits, theirs.prefill_logits, atol=1e-4, rtol=1e-7)
    assert_close(ours.last_logits, theirs.last_logits, atol=1e-4, rtol=1e-7)
    assert "MATCH" in bd.compare_tokens(ours, theirs)


def test_torch_gpt_peer_matches():
    pytest.importorskip("torch")
    model = GPT(**bd.TINY, backend="rust", rng=0)
    _check_same(model, bd.torch_gpt(model.state_dict(), model.config), bd.TINY["vocab_size"])


def test_torch_llama_peer_matches():
    pytest.importorskip("torch")
    import bench_pretrained as bp

    model = Llama(**TINY_LLAMA, backend="rust", rng=0)
    _check_same(model, bp.torch_llama(model.state_dict(), model.config), TINY_LLAMA["vocab_size"])


def test_torch_bert_peer_matches_with_padding():
    torch = pytest.importorskip("torch")
    import bench_pretrained as bp

    model = BERT(
        vocab_size=80,
        max_seq_len=32,
        d_model=32,
        n_heads=4,
        n_layers=2,
        dropout=0.0,
        gelu_approximate="none",
        backend="rust",
        rng=0,
    ).eval()
    ids = np.random.default_rng(2).integers(1, 80, (3, 10))
    mask = np.ones((3, 10), bool)
    mask[1, 6:] = mask[2, 3:] = False
    h = np.asarray(model.encode(ids, key_padding_mask=~mask), np.float64)
    m = mask[..., None]
    pooled = (h * m).sum(1) / m.sum(1)
    ours = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    peer = bp.torch_minilm(model.state_dict(), model.config)
    with torch.inference_mode():
        theirs = peer(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    assert_close(theirs, ours, atol=1e-5, rtol=1e-7)


def test_sentences_are_mixed_and_deterministic():
    import bench_pretrained as bp

    a, b = bp.sentences(50), bp.sentences(50)
    assert a == b
    lens = [len(s.split()) for s in a]
    assert min(lens) < 31 and max(lens) > 30


@pytest.mark.parametrize("cls, cfg", [(GPT, bd.TINY), (Llama, TINY_LLAMA)])
def test_profile_splits_a_step_and_unwraps(cls, cfg):
    model = cls(**cfg, backend="rust", rng=0)
    prompt = _prompt(10, cfg["vocab_size"])
    before = model.generate([prompt], 4)[0].tolist()
    report = bd.profile_decode_step(model, prompt, n_steps=3)
    for part in ("vocabulary head", "per-layer linears", "attention", "rest"):
        assert part in report
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert model.generate([prompt], 4)[0].tolist() == before
