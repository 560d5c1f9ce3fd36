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
        rng = np.random.default_rng(rng)
        self.activation, self.d_ff, self.gelu_approximate = activation, d_ff, gelu_approximate
        width = 2 * d_ff if activation == "swiglu" else d_ff
        self.fc1 = linear(d_model, width, bias, rng=rng, dtype=dtype, name="fc1")
        self.fc2 = linear(d_ff, d_model, bias, rng=rng, dtype=dtype, name="fc2")

    def forward(self, x):
        """x (..., d_model) -> (..., d_model)."""
        h = self.fc1(x)
        ops = self.ops
        if self.activation == "swiglu":
            a = ops.swiglu_forward(h[..., : self.d_ff], h[..., self.d_ff :])
        elif self.activation == "gelu":
            a = ops.gelu_forward(h, approximate=self.gelu_approximate)
        else:
            a = ops.relu_forward(h)
        if self.training:
            self.cache = h
        return self.fc2(a)

    def backward(self, dy):
        h = self.take_cache()
        da = self.fc2.backward(dy)
        ops = self.ops
        if self.activation == "swiglu":
            dgate, dup = ops.swiglu_backward(da, h[..., : self.d_ff], h[..., self.d_ff :])
            dh = ops.xp.concatenate([dgate, dup], axis=-1)
        elif self.activation == "gelu":
            dh = ops.gelu_backward(da, h, approximate=self.gelu_approximate)
        else:
            dh = ops.relu_backward(da, h)
        return self.fc1.backward(dh)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}, d_ff={self.d_ff}"


def make_feed_forward(
    layer: int, d_model: int, d_ff: int, *, activation: str = "gelu", name: str = "", **options
) -> FeedForward:
    """The default ``ff=`` factory: the same ``FeedForward`` in every block; the
    ``options`` (bias, gelu_approximate, rng, dtype, linear) as FeedForward takes them."""
    return FeedForward(d_model, d_ff, activation, **options)
