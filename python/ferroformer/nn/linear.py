"""``Linear``: y = x @ W.T + b, with W (out_features, in_features) as in PyTorch.

    lin = Linear(4, 3, rng=0)
    y = lin(x)            # x (..., 4) -> y (..., 3)
    dx = lin.backward(dy) # adds dW, db into lin.weight.grad, lin.bias.grad

Layers that hold projections (attention, feed-forward, blocks, models) build
them through a ``linear=`` factory, ``make_linear`` by default, so that
another linear layer (quantized, adapted) plugs in without a new class:

    linear(in_features, out_features, bias, *, rng, dtype, name) -> Module

``name`` is the projection's dotted name in the model as far as the caller
knows it ("qkv" inside an attention, "blocks.3.attn.qkv" from a GPT): each
owner hands its children ``scoped(linear, "child.")``. The module returned
has ``forward(x (..., in)) -> (..., out)`` and ``backward(dy) -> dx``.
"""

from __future__ import annotations

import numpy as np

from . import init
from .module import Module, Parameter


class Linear(Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        weight=None,
        rng=None,
        dtype=np.float32,
    ):
        """``weight``: an initial (out, in) array; Xavier-uniform when None."""
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        w = (
            init.xavier_uniform((out_features, in_features), rng=rng, dtype=dtype)
            if weight is None
            else np.asarray(weight, dtype=dtype)
        )
        if w.shape != (out_features, in_features):
            raise ValueError(
                f"Linear: weight must be ({out_features}, {in_features}), got {w.shape}"
            )
        self.weight = Parameter(w)
        self.bias = Parameter(init.zeros(out_features, dtype)) if bias else None

    def forward(self, x):
        """x (..., in) -> (..., out)."""
        if self.training:
            self.cache = x
        ops, w = self.ops, self.weight.data
        b = None if self.bias is None else self.bias.data
        if ops._ready(x, w.dtype, self.in_features, self.out_features):
            return ops._linear_forward(x, w, b)
        return ops.linear_forward(x, w, b)

    def backward(self, dy):
        """dy (..., out) -> dx (..., in)."""
        x = self.take_cache()
        ops, w, has_bias = self.ops, self.weight.data, self.bias is not None
        if ops._ready(dy, w.dtype, self.out_features, self.in_features) and (
            dy.shape[:-1] == x.shape[:-1] and x.dtype == w.dtype
        ):
            dx, dw, db = ops._linear_backward(dy, x, w, has_bias)
        else:
            dx, dw, db = ops.linear_backward(dy, x, w, has_bias=has_bias)
        self.weight.add_grad(dw)
        if self.bias is not None:
            self.bias.add_grad(db)
        return dx

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


def make_linear(
    in_features: int,
    out_features: int,
    bias: bool = True,
    *,
    rng=None,
    dtype=np.float32,
    name: str = "",
) -> Linear:
    """The default ``linear=`` factory: a dense ``Linear`` (``name`` is not needed)."""
    return Linear(in_features, out_features, bias, rng=rng, dtype=dtype)


def scoped(factory, prefix: str):
    """``factory`` with ``prefix`` put before the ``name`` it is called with, so that
    a child's factories see names from the model's root: scoped(linear, "attn.")."""

    def build(*args, name: str = "", **kw):
        return factory(*args, name=prefix + name, **kw)

    return build
