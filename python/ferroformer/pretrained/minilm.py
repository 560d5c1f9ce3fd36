"""all-MiniLM-L6-v2 (a 6-layer BERT) on ferroformer's ``BERT``: weights from
the model's safetensors file, its WordPiece tokenizer, and sentence
embeddings by mean pooling and L2 normalisation, as sentence-transformers
computes them.

    model, tok = load_minilm(backend="rust")
    emb = embed(model, tok, ["The weather is lovely today.", "It's so sunny outside!"])
    emb @ emb.T                                   # cosine similarities
"""

from __future__ import annotations

import json
import os
from typing import Dict, Sequence

import numpy as np

from ..backends import to_host
from ..models import BERT
from .files import package_path
from .tokenizer import Tokenizer, wordpiece_from_file

NAME = "all-MiniLM-L6-v2"


def _read_safetensors(path: str) -> Dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from e


def bert_state_from_hf(t: Dict[str, np.ndarray], n_layers: int) -> Dict[str, np.ndarray]:
    """Maps Hugging Face BertModel tensor names onto ferroformer's BERT
    (q, k and v stacked into one qkv projection); the MLM head is not in
    such files and keeps its initial values."""

    def get(name):
        if name not in t:
            raise ValueError(f"{NAME}: the weights file has no tensor {name}")
        return np.asarray(t[name], np.float32)

    out = {
        "tok_emb.weight": get("embeddings.word_embeddings.weight"),
        "pos_emb.weight": get("embeddings.position_embeddings.weight"),
        "seg_emb.weight": get("embeddings.token_type_embeddings.weight"),
        "emb_ln.weight": get("embeddings.LayerNorm.weight"),
        "emb_ln.bias": get("embeddings.LayerNorm.bias"),
    }
    for i in range(n_layers):
        hf, ff = f"encoder.layer.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{ff}attn.qkv.{kind}"] = np.concatenate(
                [get(f"{hf}attention.self.{n}.{kind}") for n in ("query", "key", "value")])
            out[f"{ff}attn.proj.{kind}"] = get(f"{hf}attention.output.dense.{kind}")
            out[f"{ff}ln1.{kind}"] = get(f"{hf}attention.output.LayerNorm.{kind}")
            out[f"{ff}ff.fc1.{kind}"] = get(f"{hf}intermediate.dense.{kind}")
            out[f"{ff}ff.fc2.{kind}"] = get(f"{hf}output.dense.{kind}")
            out[f"{ff}ln2.{kind}"] = get(f"{hf}output.LayerNorm.{kind}")
    return out


def load_minilm(backend=None):
    """(BERT model in eval mode, WordPiece tokenizer) of all-MiniLM-L6-v2."""
    folder = package_path(NAME)
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    if cfg.get("hidden_act") != "gelu":
        raise ValueError(f"{NAME}: expected GELU (erf) activations, config says {cfg.get('hidden_act')!r}")
    model = BERT(cfg["vocab_size"], max_seq_len=cfg["max_position_embeddings"],
                 d_model=cfg["hidden_size"], n_heads=cfg["num_attention_heads"],
                 n_layers=cfg["num_hidden_layers"], d_ff=cfg["intermediate_size"],
                 n_segments=cfg["type_vocab_size"], dropout=0.0, norm_eps=cfg["layer_norm_eps"],
                 gelu_approximate="none", backend=backend, rng=0)
    state = bert_state_from_hf(_read_safetensors(os.path.join(folder, "model.safetensors")),
                               cfg["num_hidden_layers"])
    model.load_state_dict(state, strict=False)
    model.eval()
    return model, wordpiece_from_file(os.path.join(folder, "tokenizer.json"))


def embed(model, tok: Tokenizer, sentences: Sequence[str], *, batch_size: int = 32,
          max_length: int = 256) -> np.ndarray:
    """Sentence embeddings (N, C): mean of the last hidden states over real
    tokens, L2-normalised; float32 on the host."""
    xp = model.ops.xp
    out = []
    for i in range(0, len(sentences), batch_size):
        ids, mask = tok.batch(sentences[i:i + batch_size], max_length=max_length)
        h = model.encode(xp.asarray(ids), key_padding_mask=xp.asarray(~mask))
        h = to_host(h).astype(np.float64)
        m = mask[..., None].astype(np.float64)
        pooled = (h * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        out.append(pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12))
    return np.concatenate(out).astype(np.float32)
