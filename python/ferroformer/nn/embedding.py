"""``Embedding``: rows of a (num_embeddings, dim) table, optionally scaled by sqrt(dim)
(as "Attention Is All You Need" does before adding positions).

    emb = Embedding(256, 64, scale=True, rng=0)
    x = emb(ids)            # ids (B, T) int -> (B, T, 64)
    emb.backward(dx)        # adds into emb.weight.grad; ids have no gradient (returns None)
"""

from __future__ import annotations

import math

import numpy as np

from . import init
from .module import Module, Parameter


class Embedding(Module):
    def __init__(
        self,
        num_embeddings: int,
        dim: int,
        *,
        scale: bool = False,
        std: float = 0.02,
        rng=None,
        dtype=np.float32,
    ):
        super().__init__()
        self.num_embeddings, self.dim = num_embeddings, dim
        self.scale = math.sqrt(dim) if scale else 1.0
        self.weight = Parameter(init.normal((num_embeddings, dim), std, rng, dtype))

    def forward(self, ids):
        """ids (...) int -> (..., dim)."""
        y = self.ops.embedding_forward(self.weight.data, ids)
        if self.training:
            self.cache = ids
        if self.scale != 1.0:
            y *= y.dtype.type(self.scale)
        return y

    def backward(self, dy):
        ids = self.take_cache()
        if self.scale != 1.0:
            dy = dy * dy.dtype.type(self.scale)
        self.weight.add_grad(self.ops.embedding_backward(dy, ids, self.num_embeddings))
        return None

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.dim}, scale={self.scale != 1.0}"
