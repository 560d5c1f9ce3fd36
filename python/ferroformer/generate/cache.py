"""Key/value caches for autoregressive decoding.

A ``KVCache`` holds, for every self-attention layer of a model, key and value
buffers of shape (B, Hkv, capacity, D), allocated once before the prompt is
read. Each forward step writes the keys and values of its new tokens at
positions [length, length + t) and attends over [0, length + t) in place:
nothing already cached is copied again. Cross-attention layers (the
encoder-decoder) keep the keys and values of the encoder output, computed
on their first step and reused after.

Prompts of different lengths share one cache by left padding: a row with p
padding columns has them hidden by the key padding mask for the whole
generation, and its tokens take positions 0, 1, ... from its first real
token, so every row computes what it would compute alone.

    cache = model.new_cache(batch=2, capacity=64, pad=[0, 3])
    logits = model(ids, cache=cache)            # prompt (B, T): fills positions 0..T-1
    logits = model(next_ids, cache=cache)       # (B, 1): position T, and so on
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np


class LayerCache:
    """The cache of one layer: self-attention ``k``, ``v`` (B, Hkv, capacity, D)
    (None for a layer without self-attention) and, for a cross-attention
    layer, ``cross_k``, ``cross_v`` once computed. ``state`` is the KVCache."""

    __slots__ = ("cross_k", "cross_v", "k", "state", "v")

    def __init__(self, state: KVCache, k, v):
        self.state, self.k, self.v = state, k, v
        self.cross_k = self.cross_v = None

    def write(self, k_new, v_new) -> int:
        """Stores (B, Hkv, t, D) keys and values at the current length; returns
        the number of positions in use after them."""
        start = self.state.length
        t = k_new.shape[2]
        end = start + t
        if end > self.state.capacity:
            raise ValueError(f"KVCache: {end} positions exceed its capacity {self.state.capacity}")
        self.k[:, :, start:end] = k_new
        self.v[:, :, start:end] = v_new
        return end


class KVCache:
    """Per-layer self-attention caches of a model, plus what the layers share:
    the number of positions filled (``length``), the padding mask (B, capacity)
    and each row's count of left-padding columns."""

    def __init__(self, ops, attentions: Sequence, batch: int, capacity: int, *,
                 pad: Optional[Sequence[int]] = None, dtype=np.float32):
        if batch < 1 or capacity < 1:
            raise ValueError(f"KVCache: batch and capacity must be >= 1, got {batch}, {capacity}")
        xp = ops.xp
        self.ops, self.batch, self.capacity, self.length = ops, batch, capacity, 0
        self.layers: List[LayerCache] = []
        for attn in attentions:
            shape = (batch, attn.n_kv_heads, capacity, attn.head_dim)
            self.layers.append(LayerCache(self, xp.zeros(shape, dtype=dtype),
                                          xp.zeros(shape, dtype=dtype)))
        self.pad = None
        self.mask = None
        if pad is not None:
            pad = np.asarray(pad, dtype=np.int64).reshape(-1)
            if pad.shape != (batch,) or (pad < 0).any() or (pad >= capacity).any():
                raise ValueError(f"KVCache: pad must hold {batch} counts in [0, {capacity}), got {pad}")
            if pad.any():
                self.pad = pad
                mask = np.arange(capacity)[None, :] < pad[:, None]
                self.mask = xp.asarray(mask)

    def __len__(self) -> int:
        return self.length

    def layer(self, i: int) -> LayerCache:
        return self.layers[i]

    def positions(self, t: int):
        """The positions of the next t tokens: None when every row is at
        ``length`` (no padding), else a host int64 array (B, t) counted from
        each row's first real token (0 on padding columns)."""
        if self.pad is None:
            return None
        pos = self.length + np.arange(t)[None, :] - self.pad[:, None]
        return np.maximum(pos, 0)

    def advance(self, t: int) -> None:
        """Marks t more positions as filled (every layer has written them)."""
        self.length += t

    def nbytes(self) -> int:
        return sum(int(c.k.nbytes) + int(c.v.nbytes) for c in self.layers)

    def __repr__(self) -> str:
        return (f"KVCache(layers={len(self.layers)}, batch={self.batch}, "
                f"length={self.length}/{self.capacity}, {self.nbytes() / 2**20:.1f} MiB)")
