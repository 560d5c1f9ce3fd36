"""Choosing the next token from logits: greedy, temperature, top-k and
nucleus (top-p) sampling, seeded through a NumPy Generator.

Works on the last-position logits of a batch, ``logits (B, V)``, on host
arrays (one row of V floats per sequence per step is cheap to move).
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def check_sampling_args(temperature: float, top_k: Optional[int], top_p: Optional[float]) -> None:
    if temperature < 0:
        raise ValueError(f"generate: temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"generate: top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"generate: top_p must be in (0, 1], got {top_p}")


def filter_logits(logits, top_k: Optional[int] = None, top_p: Optional[float] = None):
    """logits (B, V) float → a float64 copy with the tokens outside the top-k
    and outside the smallest set whose probability reaches top_p set to -inf."""
    z = np.array(logits, dtype=np.float64)
    v = z.shape[-1]
    if top_k is not None and top_k < v:
        kth = np.partition(z, v - top_k, axis=-1)[:, v - top_k][:, None]
        z[z < kth] = -np.inf
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-z, axis=-1, kind="stable")
        sorted_z = np.take_along_axis(z, order, axis=-1)
        p = np.exp(sorted_z - sorted_z[:, :1])
        p /= p.sum(axis=-1, keepdims=True)
        before = np.cumsum(p, axis=-1) - p  # probability mass ranked above each token
        drop_sorted = before >= top_p  # the top token always stays (its "before" is 0)
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        z[drop] = -np.inf
    return z


def sample_next(
    logits,
    *,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    rng: Optional[np.random.Generator] = None,
):
    """logits (B, V) → next token ids (B,) int64. ``temperature == 0`` is greedy."""
    logits = np.asarray(logits)
    if temperature == 0:
        return np.argmax(logits, axis=-1).astype(np.int64)
    rng = np.random.default_rng(rng)
    z = filter_logits(logits / temperature, top_k, top_p)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    # inverse-CDF sampling: one uniform draw per row, reproducible for a seed
    u = rng.random(p.shape[0])[:, None]
    idx = (np.cumsum(p, axis=-1) < u).sum(axis=-1)
    return np.minimum(idx, p.shape[-1] - 1).astype(np.int64)
