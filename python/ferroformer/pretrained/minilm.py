"""all-MiniLM-L6-v2 (a 6-layer BERT) on ferroformer's ``BERT``: weights from
the model's safetensors file, its WordPiece tokenizer, and sentence
embeddings by mean pooling and L2 normalisation, as sentence-transformers
computes them.

    model, tok = load_minilm(backend="rust")
    emb = embed(model, tok, ["The weather is lovely today.", "It's so sunny outside!"])
    emb @ emb.T                                   # cosine similarities
"""

from __future__ import annotations

import os
from typing import Dict, Sequence

import numpy as np

from .._files import read_json, read_safetensors
from ..backends import to_host
from ..checkpoint import check_config_against_tensors
from ..models import BERT
from .files import package_path
from .tokenizer import Tokenizer, wordpiece_from_file
from .values import positive

NAME = "all-MiniLM-L6-v2"
MAX_CONFIG_BYTES = 1 << 20
_HEAD = ("head_dense.weight", "head_dense.bias", "head_ln.weight", "head_ln.bias", "decoder.bias")


def _read_safetensors(path: str) -> Dict[str, np.ndarray]:
    """The tensors of a safetensors file, its header checked first (_files.read_safetensors)."""
    return read_safetensors(path, "safetensors file")[0]


def bert_state_from_hf(
    t: Dict[str, np.ndarray], n_layers: int, *, source: str = NAME
) -> Dict[str, np.ndarray]:
    """Maps Hugging Face BertModel tensor names onto ferroformer's BERT
    (q, k and v stacked into one qkv projection); the MLM head is not in
    such files and keeps its initial values. ValueError (naming ``source``) for
    a missing, non-float or non-finite tensor, or q, k and v of different shapes."""

    def get(name):
        if name not in t:
            raise ValueError(f"{source}: the weights file has no tensor {name}")
        a = t[name]
        if a.dtype.kind != "f" or not np.isfinite(a).all():
            raise ValueError(f"{source}: tensor {name} is not a finite float array ({a.dtype})")
        return np.asarray(a, np.float32)

    def stacked(names):
        parts = [get(n) for n in names]
        if len({p.shape for p in parts}) != 1:
            raise ValueError(
                f"{source}: tensors {names} have different shapes {[p.shape for p in parts]}"
            )
        return np.concatenate(parts)

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
            out[f"{ff}attn.qkv.{kind}"] = stacked(
                [f"{hf}attention.self.{n}.{kind}" for n in ("query", "key", "value")]
            )
            out[f"{ff}attn.proj.{kind}"] = get(f"{hf}attention.output.dense.{kind}")
            out[f"{ff}ln1.{kind}"] = get(f"{hf}attention.output.LayerNorm.{kind}")
            out[f"{ff}ff.fc1.{kind}"] = get(f"{hf}intermediate.dense.{kind}")
            out[f"{ff}ff.fc2.{kind}"] = get(f"{hf}output.dense.{kind}")
            out[f"{ff}ln2.{kind}"] = get(f"{hf}output.LayerNorm.{kind}")
    return out


def bert_config_from_hf(cfg, source: str) -> dict:
    """ferroformer BERT config of a Hugging Face BertModel config.json (a dict);
    ValueError (naming ``source``) for a missing key or a value of the wrong type."""
    if not isinstance(cfg, dict):
        raise ValueError(f"{source}: not a valid config.json: not a JSON object")

    def get(key, kind):
        if key not in cfg:
            raise ValueError(f"{source}: not a valid config.json: no {key!r}")
        where = f"{source}: not a valid config.json"
        return positive(cfg[key], kind, key, where, low=int(key != "type_vocab_size"))

    if cfg.get("hidden_act") != "gelu":
        raise ValueError(
            f"{source}: expected GELU (erf) activations, config says {cfg.get('hidden_act')!r:.80}"
        )
    return dict(
        vocab_size=get("vocab_size", int),
        max_seq_len=get("max_position_embeddings", int),
        d_model=get("hidden_size", int),
        n_heads=get("num_attention_heads", int),
        n_layers=get("num_hidden_layers", int),
        d_ff=get("intermediate_size", int),
        n_segments=get("type_vocab_size", int),
        dropout=0.0,
        norm_eps=float(get("layer_norm_eps", float)),
        gelu_approximate="none",
    )


def load_minilm(backend=None, folder=None):
    """(BERT model in eval mode, WordPiece tokenizer) of all-MiniLM-L6-v2, from its
    package (or from ``folder`` holding config.json, model.safetensors and
    tokenizer.json). Every file is checked first (ValueError naming it), and the
    config against the weights' shapes before the model is built."""
    folder = package_path(NAME) if folder is None else os.fspath(folder)
    cfg_path = os.path.join(folder, "config.json")
    config = bert_config_from_hf(
        read_json(cfg_path, "config.json", max_bytes=MAX_CONFIG_BYTES), cfg_path
    )
    try:
        BERT.validate_config(config)
    except ValueError as e:
        raise ValueError(f"{cfg_path}: not a valid config.json: {e}") from None
    weights = os.path.join(folder, "model.safetensors")
    tensors = _read_safetensors(weights)
    if config["n_layers"] > len(tensors):
        raise ValueError(
            f"{cfg_path}: num_hidden_layers {config['n_layers']}, but {weights} "
            f"holds only {len(tensors)} tensors"
        )
    state = bert_state_from_hf(tensors, config["n_layers"], source=weights)
    if not config["n_segments"]:
        state.pop("seg_emb.weight")
    shapes = {k: v.shape for k, v in state.items()}
    want_head = {
        "head_dense.weight": (config["d_model"],) * 2,
        "decoder.bias": (config["vocab_size"],),
    }
    shapes.update({k: want_head.get(k, (config["d_model"],)) for k in _HEAD})
    check_config_against_tensors(
        weights, "BERT", config, shapes, what=f"{NAME} weights file (with {cfg_path})"
    )
    tok = wordpiece_from_file(os.path.join(folder, "tokenizer.json"))
    model = BERT(**config, backend=backend, rng=0)
    model.load_state_dict(state, strict=False)
    model.eval()
    return model, tok


def embed(
    model, tok: Tokenizer, sentences: Sequence[str], *, batch_size: int = 32, max_length: int = 256
) -> np.ndarray:
    """Sentence embeddings (N, C): mean of the last hidden states over real
    tokens, L2-normalised; float32 on the host."""
    xp = model.ops.xp
    out = []
    for i in range(0, len(sentences), batch_size):
        ids, mask = tok.batch(sentences[i : i + batch_size], max_length=max_length)
        h = model.encode(xp.asarray(ids), key_padding_mask=xp.asarray(~mask))
        h = to_host(h).astype(np.float64)
        m = mask[..., None].astype(np.float64)
        pooled = (h * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        out.append(pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12))
    return np.concatenate(out).astype(np.float32)
