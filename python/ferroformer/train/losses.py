"""``CrossEntropyLoss`` with label smoothing and ``ignore_index``, over logits of any rank.

loss_fn = CrossEntropyLoss(ignore_index=-100, label_smoothing=0.1)
loss = loss_fn(logits, targets)        # logits (..., V), targets (...) int -> float (mean)
dlogits = loss_fn.backward()           # same shape as logits; grad= scales it (accumulation)
"""

from __future__ import annotations

from .. import backends
from .checks import integer, real


class CrossEntropyLoss:
    def __init__(self, ignore_index: int = -100, label_smoothing: float = 0.0, *, ops=None):
        self.ignore_index = integer("CrossEntropyLoss", "ignore_index", ignore_index)
        self.label_smoothing = real(
            "CrossEntropyLoss", "label_smoothing", label_smoothing, low=0, high=1, high_open=True
        )
        self.ops = ops
        self.cache = None

    def __call__(self, logits, targets) -> float:
        return self.forward(logits, targets)

    def forward(self, logits, targets) -> float:
        ops = self.ops or backends.backend()
        v = logits.shape[-1]
        if tuple(targets.shape) != tuple(logits.shape[:-1]):
            raise ValueError(
                f"CrossEntropyLoss: targets {tuple(targets.shape)} must be logits "
                f"{tuple(logits.shape)} without the last axis"
            )
        flat, t = logits.reshape(-1, v), ops.asarray(targets).reshape(-1)
        loss, lse = ops.cross_entropy_forward(
            flat, t, ignore_index=self.ignore_index, label_smoothing=self.label_smoothing
        )
        self.cache = (flat, t, lse, logits.shape)
        return float(loss)

    def backward(self, grad: float = 1.0):
        """d (grad * loss) / d logits."""
        if self.cache is None:
            raise RuntimeError("CrossEntropyLoss.backward: call forward first")
        flat, t, lse, shape = self.cache
        self.cache = None
        ops = self.ops or backends.backend()
        d = ops.cross_entropy_backward(
            flat,
            t,
            lse,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            grad=grad,
        )
        return d.reshape(shape)
