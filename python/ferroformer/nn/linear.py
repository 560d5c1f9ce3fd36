"""``Linear``: y = x @ W.T + b, with W (out_features, in_features) as in PyTorch.

    lin = Linear(4, 3, rng=0)
    y = lin(x)            # x (..., 4) -> y (..., 3)
    dx = lin.backward(dy) # adds dW, db into lin.weight.grad, lin.bias.grad
"""

from __future__ import annotations

import numpy as np

from . import init
from .module import Module, Parameter


class Linear(Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 weight=None, rng=None, dtype=np.float32):
        """``weight``: an initial (out, in) array; Xavier-uniform when None."""
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        w = init.xavier_uniform((out_features, in_features), rng=rng, dtype=dtype) if weight is None \
            else np.asarray(weight, dtype=dtype)
        if w.shape != (out_features, in_features):
            raise ValueError(f"Linear: weight must be ({out_features}, {in_features}), got {w.shape}")
        self.weight = Parameter(w)
        self.bias = Parameter(init.zeros(out_features, dtype)) if bias else None

    def forward(self, x):
        """x (..., in) -> (..., out)."""
        if self.training:
            self.cache = x
        return self.ops.linear_forward(x, self.weight.data, None if self.bias is None else self.bias.data)

    def backward(self, dy):
        """dy (..., out) -> dx (..., in)."""
        x = self.take_cache()
        dx, dw, db = self.ops.linear_backward(dy, x, self.weight.data, has_bias=self.bias is not None)
        self.weight.add_grad(dw)
        if self.bias is not None:
            self.bias.add_grad(db)
        return dx

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"

