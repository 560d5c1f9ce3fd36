"""``FeedForward``: the position-wise MLP of a transformer block.

    ff = FeedForward(64, 256, activation="gelu")     # also "relu" and "swiglu"
    y = ff(x)                                        # x (..., 64)

SwiGLU (Llama) fuses its gate and up projections into one ``fc1`` of shape
(2 d_ff, d_model): rows [0, d_ff) are the gate, rows [d_ff, 2 d_ff) the up
projection; ``fc2`` is (d_model, d_ff) as for the other activations.

Both projections come from the ``linear=`` factory (see linear.py). Blocks
build their feed-forward through the ``ff=`` factory, ``make_feed_forward`` by
default, so that another layer (an expert layer, say) can take its place in
any block; blocks.py describes the factories.
"""

from __future__ import annotations

import numpy as np

from ..backends import _checks as C
from .linear import make_linear
from .module import Module

ACTIVATIONS = ("relu", "gelu", "swiglu")


class FeedForward(Module):
    def __init__(
        self,
        d_model: int,
        d_ff: int,
        activation: str = "gelu",
        *,
        bias: bool = True,
        gelu_approximate: str = "tanh",
        rng=None,
        dtype=np.float32,
        linear=make_linear,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"FeedForward: activation must be one of {ACTIVATIONS}, got {activation!r}"
            )
        C.gelu_approximate("FeedForward", gelu_approximate)
        rng = np.random.default_rng(rng)
        self.activation, self.d_ff, self.gelu_approximate = activation, d_ff, gelu_approximate
        width = 2 * d_ff if activation == "swiglu" else d_ff
        self.fc1 = linear(d_model, width, bias, rng=rng, dtype=dtype, name="fc1")
        self.fc2 = linear(d_ff, d_model, bias, rng=rng, dtype=dtype, name="fc2")

    def forward(self, x):
        """x (..., d_model) -> (..., d_model)."""
        h = self.fc1(x)
        a = self._activate(h)
        if self.training:
            self.cache = h
        return self.fc2(a)

    def backward(self, dy):
        h = self.take_cache()
        da = self.fc2.backward(dy)
        return self.fc1.backward(self._activate_backward(da, h))

    # h comes from fc1, so its shape is this layer's own: the unchecked ops take it
    # unless it is of another kind than fc1 usually returns (a dtype mix under mixed
    # precision, a plugged-in linear's output), which the public ops check
    def _fast(self, h) -> bool:
        width = 2 * self.d_ff if self.activation == "swiglu" else self.d_ff
        return self.ops._ready(h, h.dtype, width, 1)

    def _activate(self, h):
        ops, f, fast = self.ops, self.d_ff, self._fast(h)
        if self.activation == "swiglu":
            gate, up = h[..., :f], h[..., f:]
            return ops._swiglu_forward(gate, up) if fast else ops.swiglu_forward(gate, up)
        if self.activation == "gelu":
            approx = self.gelu_approximate
            return ops._gelu_forward(h, approx) if fast else ops.gelu_forward(h, approximate=approx)
        return ops._relu_forward(h) if fast else ops.relu_forward(h)

    def _activate_backward(self, da, h):
        ops, f = self.ops, self.d_ff
        fast = self._fast(h) and ops._ready(da, h.dtype, f) and da.shape[:-1] == h.shape[:-1]
        if self.activation == "swiglu":
            gate, up = h[..., :f], h[..., f:]
            back = ops._swiglu_backward if fast else ops.swiglu_backward
            return ops.xp.concatenate(back(da, gate, up), axis=-1)
        if self.activation == "gelu":
            approx = self.gelu_approximate
            if fast:
                return ops._gelu_backward(da, h, approx)
            return ops.gelu_backward(da, h, approximate=approx)
        return ops._relu_backward(da, h) if fast else ops.relu_backward(da, h)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}, d_ff={self.d_ff}"


def make_feed_forward(
    layer: int, d_model: int, d_ff: int, *, activation: str = "gelu", name: str = "", **options
) -> FeedForward:
    """The default ``ff=`` factory: the same ``FeedForward`` in every block; the
    ``options`` (bias, gelu_approximate, rng, dtype, linear) as FeedForward takes them."""
    return FeedForward(d_model, d_ff, activation, **options)
