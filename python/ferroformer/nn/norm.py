"""``LayerNorm`` (mean and variance, weight and bias) and ``RMSNorm`` (root mean
square, weight only) over the last axis.

    ln = LayerNorm(64)
    y = ln(x)              # x (..., 64)
    dx = ln.backward(dy)
"""

from __future__ import annotations

import numpy as np

from ..backends import _checks as C
from . import init
from .module import Module, Parameter


class LayerNorm(Module):
    def __init__(self, dim: int, eps: float = 1e-5, *, dtype=np.float32):
        super().__init__()
        self.dim, self.eps = dim, C.real(type(self).__name__, "eps", eps, low=0.0)
        self.weight = Parameter(init.ones(dim, dtype))
        self.bias = Parameter(init.zeros(dim, dtype))

    def forward(self, x):
        ops, g, b = self.ops, self.weight.data, self.bias.data
        if ops._ready(x, g.dtype, self.dim, 2):
            y, mean, rstd = ops._layernorm_forward(x, g, b, self.eps)
        else:
            y, mean, rstd = ops.layernorm_forward(x, g, b, eps=self.eps)
        if self.training:
            self.cache = (x, mean, rstd)
        return y

    def backward(self, dy):
        x, mean, rstd = self.take_cache()
        ops, g = self.ops, self.weight.data
        if ops._ready(dy, g.dtype, self.dim) and dy.shape == x.shape and x.dtype == g.dtype:
            dx, dgamma, dbeta = ops._layernorm_backward(dy, x, g, mean, rstd)
        else:
            dx, dgamma, dbeta = ops.layernorm_backward(dy, x, g, mean, rstd)
        self.weight.add_grad(dgamma)
        self.bias.add_grad(dbeta)
        return dx

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


class RMSNorm(Module):
    def __init__(self, dim: int, eps: float = 1e-6, *, dtype=np.float32):
        super().__init__()
        self.dim, self.eps = dim, C.real(type(self).__name__, "eps", eps, low=0.0)
        self.weight = Parameter(init.ones(dim, dtype))

    def forward(self, x):
        ops, g = self.ops, self.weight.data
        if ops._ready(x, g.dtype, self.dim, 1):
            y, rstd = ops._rmsnorm_forward(x, g, self.eps)
        else:
            y, rstd = ops.rmsnorm_forward(x, g, eps=self.eps)
        if self.training:
            self.cache = (x, rstd)
        return y

    def backward(self, dy):
        x, rstd = self.take_cache()
        ops, g = self.ops, self.weight.data
        if ops._ready(dy, g.dtype, self.dim) and dy.shape == x.shape and x.dtype == g.dtype:
            dx, dgamma = ops._rmsnorm_backward(dy, x, g, rstd)
        else:
            dx, dgamma = ops.rmsnorm_backward(dy, x, g, rstd)
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
