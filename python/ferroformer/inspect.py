"""Seeing inside a model: attention probabilities, their entropy, and the
nearest neighbours of a token in the embedding table.

    w = attention_weights(gpt, ids, layer=1)                 # (B, H, Tq, Tk) host float32
    w0 = attention_weights(gpt, ids, layer=1, head=0)        # (B, Tq, Tk)
    w = attention_weights(tr, src, tgt, layer=0, kind="cross")          # Transformer
    w = attention_weights(tr, src, tgt, layer=0, stack="decoder")       # decoder self-attention
    attention_entropy(w)                                     # (B, H) nats, mean over query rows
    ids, sims = nearest_neighbours(gpt, token_id=42, k=5)    # most similar rows of wte

Everything here runs in eval mode and hands back host NumPy arrays, whatever
the model's backend. (The module shares its name with the standard library's
``inspect``; absolute imports, the only kind Python 3 does, never confuse them.)
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .backends import to_host

KINDS = ("self", "cross")
STACKS = ("encoder", "decoder")
METRICS = ("cosine", "dot", "euclidean")


# -- which attention module --------------------------------------------------------------
def _blocks(model, kind: str, stack: Optional[str]) -> Tuple[list, str, str]:
    """(the blocks holding the chosen attention, attribute name, a label for messages)."""
    if kind not in KINDS:
        raise ValueError(f"attention_weights: kind must be one of {KINDS}, got {kind!r}")
    name = type(model).__name__
    if hasattr(model, "encoder") and hasattr(model, "decoder") and hasattr(model, "src_emb"):
        if stack is None:
            stack = "decoder" if kind == "cross" else "encoder"
        if stack not in STACKS:
            raise ValueError(f"attention_weights: stack must be one of {STACKS}, got {stack!r}")
        if kind == "cross" and stack == "encoder":
            raise ValueError(
                "attention_weights: the encoder has no cross-attention; "
                "use stack='decoder' with kind='cross'"
            )
        blocks = list(getattr(model, stack))
        return blocks, "cross_attn" if kind == "cross" else "attn", f"{name} {stack}"
    if stack is not None:
        raise ValueError(
            f"attention_weights: stack applies to the encoder-decoder Transformer, not to {name}"
        )
    if kind == "cross":
        raise ValueError(f"attention_weights: {name} has no cross-attention")
    if not hasattr(model, "blocks"):
        raise ValueError(
            f"attention_weights: {name} has no attention blocks "
            "(expected GPT, Llama, BERT or Transformer)"
        )
    return list(model.blocks), "attn", name


def attention_module(model, layer: int, *, kind: str = "self", stack: Optional[str] = None):
    """The MultiHeadAttention of ``layer`` (negative counts from the end), chosen as in
    ``attention_weights``; a ValueError names the valid range."""
    blocks, attr, label = _blocks(model, kind, stack)
    n = len(blocks)
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
        raise ValueError(f"attention_weights: layer must be an int, got {layer!r}")
    if not -n <= layer < n:
        raise ValueError(
            f"attention_weights: layer {layer} is out of range for the "
            f"{n} layers of {label} (0..{n - 1})"
        )
    return getattr(blocks[int(layer)], attr)


def _to_backend(model, x):
    if isinstance(x, (np.ndarray, list, tuple)):
        return model.ops.asarray(np.asarray(x))
    return x


def attention_weights(
    model,
    *inputs,
    layer: int,
    head: Optional[int] = None,
    kind: str = "self",
    stack: Optional[str] = None,
    **forward_kwargs,
) -> np.ndarray:
    """Runs ``model(*inputs, **forward_kwargs)`` once in eval mode and returns the
    attention probabilities of one layer: (B, H, Tq, Tk) host float32, or
    (B, Tq, Tk) for one ``head``. Each row sums to 1 over the keys it may see.

    ``kind`` ("self" or "cross") and ``stack`` ("encoder" or "decoder") pick the
    attention of the encoder-decoder Transformer (default stack: the encoder for
    self-attention, the decoder for cross-attention); GPT, Llama and BERT have one
    self-attention per block. The model's mode and the module's ``keep_weights`` and
    ``weights`` are restored afterwards, whatever happens."""
    attn = attention_module(model, layer, kind=kind, stack=stack)
    if head is not None:
        if (
            isinstance(head, bool)
            or not isinstance(head, (int, np.integer))
            or not -attn.n_heads <= head < attn.n_heads
        ):
            raise ValueError(
                f"attention_weights: head {head!r} is out of range for "
                f"{attn.n_heads} heads (0..{attn.n_heads - 1})"
            )
    was_training, old_keep, old_weights = model.training, attn.keep_weights, attn.weights
    try:
        model.eval()
        attn.keep_weights, attn.weights = True, None
        model(
            *[_to_backend(model, x) for x in inputs],
            **{k: _to_backend(model, v) for k, v in forward_kwargs.items()},
        )
        w = attn.weights
        if w is None:
            raise RuntimeError(
                f"attention_weights: layer {layer} ({kind}) did not run in the forward pass"
            )
    finally:
        attn.keep_weights, attn.weights = old_keep, old_weights
        model.train(was_training)
    w = np.asarray(to_host(w), dtype=np.float32)
    return w if head is None else np.ascontiguousarray(w[:, int(head)])


def attention_entropy(weights) -> np.ndarray:
    """Entropy in nats of each attention row, -sum_k p log p (0 log 0 = 0), averaged
    over the query rows: (..., Tq, Tk) -> (...), so (B, H, Tq, Tk) -> (B, H) and
    (H, Tq, Tk) -> (H,). Rows that are all zero (fully masked) are left out of the
    mean; where every row is, the result is NaN. Uniform attention over Tk keys has
    entropy log(Tk); attention on one key, 0."""
    p = np.asarray(to_host(weights), dtype=np.float64)
    if p.ndim < 2:
        raise ValueError(f"attention_entropy: weights must be (..., Tq, Tk), got shape {p.shape}")
    if (p < 0).any() or not np.isfinite(p).all():
        raise ValueError("attention_entropy: weights must be finite and non-negative")
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    rows = -plogp.sum(axis=-1)  # (..., Tq)
    valid = p.sum(axis=-1) > 0
    count = valid.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.where(valid, rows, 0.0).sum(axis=-1) / count, np.nan)


# -- embeddings --------------------------------------------------------------------------
def embedding_matrix(model, table: Optional[str] = None) -> np.ndarray:
    """The token embedding (V, C) of a model as a host array: GPT ``wte``, Llama and
    BERT ``tok_emb``, Transformer ``src_emb`` or ``tgt_emb`` (``table="src"`` or
    ``"tgt"``, default "src"). An Embedding module or a 2-D array passes through."""
    if hasattr(model, "src_emb") and hasattr(model, "tgt_emb"):
        table = "src" if table is None else table
        if table not in ("src", "tgt"):
            raise ValueError(f"nearest_neighbours: table must be 'src' or 'tgt', got {table!r}")
        weight = getattr(model, f"{table}_emb").weight.data
    elif table is not None:
        raise ValueError("nearest_neighbours: table ('src'/'tgt') applies to the Transformer only")
    elif hasattr(model, "wte"):
        weight = model.wte.weight.data
    elif hasattr(model, "tok_emb"):
        weight = model.tok_emb.weight.data
    elif hasattr(model, "weight") and hasattr(model, "num_embeddings"):
        weight = model.weight.data
    else:
        weight = model
    m = to_host(weight)
    if m.ndim != 2 or m.dtype.kind != "f":
        raise ValueError(
            f"nearest_neighbours: expected a model or a (V, C) float embedding "
            f"matrix, got {type(model).__name__} of shape {getattr(m, 'shape', None)}"
        )
    return m


def nearest_neighbours(
    model, token_id: int, k: int = 5, metric: str = "cosine", *, table: Optional[str] = None
) -> Tuple[np.ndarray, np.ndarray]:
    """The ``k`` tokens whose embedding rows are nearest to ``token_id``'s, itself left
    out: (ids (k,) int64, scores (k,) float64), best first, ties by lower id.
    ``metric``: "cosine" (similarity, high first), "dot" (inner product, high first)
    or "euclidean" (distance, low first). ``model`` is a model (see
    ``embedding_matrix``), an Embedding, or a (V, C) matrix."""
    if metric not in METRICS:
        raise ValueError(f"nearest_neighbours: metric must be one of {METRICS}, got {metric!r}")
    m = embedding_matrix(model, table).astype(np.float64)
    v = m.shape[0]
    if (
        isinstance(token_id, bool)
        or not isinstance(token_id, (int, np.integer))
        or not 0 <= token_id < v
    ):
        raise ValueError(
            f"nearest_neighbours: token_id {token_id!r} is out of range "
            f"for {v} embeddings (0..{v - 1})"
        )
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= v - 1:
        raise ValueError(f"nearest_neighbours: k must be in 1..{v - 1}, got {k!r}")
    x = m[int(token_id)]
    if metric == "euclidean":
        scores = np.sqrt(((m - x) ** 2).sum(axis=1))
        key = scores
    else:
        scores = m @ x
        if metric == "cosine":
            norms = np.linalg.norm(m, axis=1) * np.linalg.norm(x)
            scores = np.divide(scores, norms, out=np.zeros_like(scores), where=norms > 0)
        key = -scores
    order = [i for i in np.argsort(key, kind="stable") if i != token_id][: int(k)]
    ids = np.asarray(order, dtype=np.int64)
    return ids, scores[ids]
