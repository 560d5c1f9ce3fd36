"""``Dropout`` with its own seeded generator, so runs (and resumed runs) repeat exactly.

    drop = Dropout(0.1, rng=0)
    y = drop(x)             # training: zeroes a fraction p, scales the rest by 1/(1-p)
    dx = drop.backward(dy)  # eval mode or p == 0: identity

The mask is drawn on the host with NumPy's generator and moved with
``ops.asarray``; its state is saved in checkpoints (``Module.rng_states``).
"""

from __future__ import annotations

import numpy as np

from .module import Module


class Dropout(Module):
    def __init__(self, p: float = 0.1, *, rng=None):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = float(p)
        self.rng = np.random.default_rng(rng)

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = self.rng.random(x.shape, dtype=np.float32) >= self.p
        mask = self.ops.asarray(keep, dtype=x.dtype) * x.dtype.type(1.0 / (1.0 - self.p))
        self.cache = mask
        return x * mask

    def backward(self, dy):
        if not self.training or self.p == 0.0:
            return dy
        return dy * self.take_cache()

    def extra_repr(self) -> str:
        return f"p={self.p}"
