"""The decode cache: each layer's own state plus the per-row bookkeeping they share.

A ``KVCache`` is built from a model's layers (its blocks, or single mixing
layers) before the prompt is read: it asks each for its state with
``layer.new_state(batch, capacity, dtype)`` and keeps what it gets without
looking inside. A self-attention layer answers with key and value buffers
(B, Hkv, capacity, D) that each step writes its new tokens into, at
positions [length, length + t), and attends over in place; a cross-attention
layer with a slot for the encoder output's keys and values, filled on its
first step; another mixing layer (a state-space one, say) with whatever it
carries from step to step. The cache itself holds only what every layer
shares: the number of positions filled (``length``), each row's left-padding
count and the padding ``mask`` (B, capacity), and from them the positions of
the next tokens. A layer receives its slot, a ``LayerCache``, as ``cache=``.

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
    """One layer's slot in a ``KVCache``: ``state``, what the layer's ``new_state``
    made, and ``rows``, the KVCache, whose ``length``, ``positions(t)`` and ``mask``
    every layer shares."""

    __slots__ = ("_parts", "rows", "state")

    def __init__(self, rows: KVCache, state):
        self.rows, self.state = rows, state
        self._parts = None

    def parts(self) -> tuple:
        """For a layer whose state is the tuple of its parts' states (a block with
        self- and cross-attention): one slot per part, made once."""
        if self._parts is None:
            self._parts = tuple(LayerCache(self.rows, s) for s in self.state)
        return self._parts


class KVCache:
    """The decode states of a model's layers (``layers[i].state``), plus the per-row
    bookkeeping they share: the number of positions filled (``length``), each
    row's count of left-padding columns (``pad``) and the padding mask (B, capacity).

    ``layers``: the modules to hold states for, each with ``new_state(batch,
    capacity, dtype)``; ``cache.layer(i)`` is the slot to pass to ``layers[i]``."""

    def __init__(
        self,
        ops,
        layers: Sequence,
        batch: int,
        capacity: int,
        *,
        pad: Optional[Sequence[int]] = None,
        dtype=np.float32,
    ):
        if batch < 1 or capacity < 1:
            raise ValueError(f"KVCache: batch and capacity must be >= 1, got {batch}, {capacity}")
        self.ops, self.batch, self.capacity, self.length = ops, batch, capacity, 0
        self.pad = None
        self.mask = None
        if pad is not None:
            pad = np.asarray(pad, dtype=np.int64).reshape(-1)
            if pad.shape != (batch,) or (pad < 0).any() or (pad >= capacity).any():
                raise ValueError(
                    f"KVCache: pad must hold {batch} counts in [0, {capacity}), got {pad}"
                )
            if pad.any():
                self.pad = pad
                self.mask = ops.xp.asarray(np.arange(capacity)[None, :] < pad[:, None])
        self.layers: List[LayerCache] = [
            LayerCache(self, m.new_state(batch, capacity, dtype)) for m in layers
        ]

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
        """Bytes held by the layers' states (those that report ``nbytes()``)."""
        return sum(_nbytes(c.state) for c in self.layers)

    def __repr__(self) -> str:
        return (
            f"KVCache(layers={len(self.layers)}, batch={self.batch}, "
            f"length={self.length}/{self.capacity}, {self.nbytes() / 2**20:.1f} MiB)"
        )


def _nbytes(state) -> int:
    if isinstance(state, (tuple, list)):
        return sum(_nbytes(s) for s in state)
    size = getattr(state, "nbytes", None)
    return int(size()) if callable(size) else 0
