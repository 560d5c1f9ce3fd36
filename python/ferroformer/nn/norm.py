"""``LayerNorm`` (mean and variance, weight and bias) and ``RMSNorm`` (root mean
square, weight only) over the last axis.

    ln = LayerNorm(64)
    y = ln(x)              # x (..., 64)
    dx = ln.backward(dy)
"""

from __future__ import annotations

import numpy as np

from . import init
from .module import Module, Parameter


class LayerNorm(Module):
    def __init__(self, dim: int, eps: float = 1e-5, *, dtype=np.float32):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = Parameter(init.ones(dim, dtype))
        self.bias = Parameter(init.zeros(dim, dtype))

    def forward(self, x):
        y, mean, rstd = self.ops.layernorm_forward(
            x, self.weight.data, self.bias.data, eps=self.eps
        )
        if self.training:
            self.cache = (x, mean, rstd)
        return y

    def backward(self, dy):
        x, mean, rstd = self.take_cache()
        dx, dgamma, dbeta = self.ops.layernorm_backward(dy, x, self.weight.data, mean, rstd)
        self.weight.add_grad(dgamma)
        self.bias.add_grad(dbeta)
        return dx

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


class RMSNorm(Module):
    def __init__(self, dim: int, eps: float = 1e-6, *, dtype=np.float32):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = Parameter(init.ones(dim, dtype))

    def forward(self, x):
        y, rstd = self.ops.rmsnorm_forward(x, self.weight.data, eps=self.eps)
        if self.training:
            self.cache = (x, rstd)
        return y

    def backward(self, dy):
        x, rstd = self.take_cache()
        dx, dgamma = self.ops.rmsnorm_backward(dy, x, self.weight.data, rstd)
        self.weight.add_grad(dgamma)
        return dx

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


def make_norm(kind: str, dim: int, eps=None, dtype=np.float32) -> Module:
    """ "layer" -> LayerNorm, "rms" -> RMSNorm (default eps of each when eps is None)."""
    if kind == "layer":
        return LayerNorm(dim, 1e-5 if eps is None else eps, dtype=dtype)
    if kind == "rms":
        return RMSNorm(dim, 1e-6 if eps is None else eps, dtype=dtype)
    raise ValueError(f"unknown norm {kind!r}; choose 'layer' or 'rms'")
