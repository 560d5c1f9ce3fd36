"""Mixed precision: the cupy backend computing in bfloat16 or float16 with
float32 master weights, and the dynamic loss scaler that float16 needs.

    ops = ff.backend("cupy").with_dtype("bfloat16")   # or with_dtype(ff.backend("cupy"), "bfloat16")
    model.to(ops)                  # parameters stay float32 (the master weights), on the GPU
    logits = model(ids)            # activations and products in bfloat16, accumulated in float32
    loss, lse = ops.cross_entropy_forward(logits2d, targets)     # float32 loss
    model.backward(ops.cross_entropy_backward(logits2d, targets, lse))
    opt.step()                     # AdamW on float32 weights, grads and moments

    scaler = DynamicLossScaler()   # float16 only: bfloat16 has float32's range
    model.backward(ops.cross_entropy_backward(logits2d, targets, lse, grad=scaler.scale))
    if scaler.unscale(model.parameters()):   # grads /= scale in place; False on inf / nan
        opt.step()
    scaler.update()                # halve after an overflow, double after growth_interval clean steps

The rules of mixed precision (``casting.CastPolicy`` with a half compute
dtype, which ``MixedPrecisionBackend`` puts on the cupy backend; the op
contract is otherwise unchanged):
  - every floating-point input may be float32 or the compute dtype; activations
    are cast to the compute dtype (a float32 one costs a cast) and every
    activation output is in the compute dtype;
  - parameters (linear w and b, norm gamma and beta, the embedding table, RoPE
    tables) may stay float32: they are cast where a product needs them, and a
    parameter's gradient comes back in the parameter's own dtype: dw, db,
    dgamma, dbeta; embedding_backward, which does not see the table, returns
    float32. So Parameter.grad and the optimizer state stay float32;
  - statistics stay float32: mean, rstd, lse, the loss;
  - sums are float32: cuBLAS with CUBLAS_COMPUTE_32F, and the kernels compute
    in float whatever they store;
  - adamw_step updates float32 param, m and v (a half-precision grad is cast up).
"""

from __future__ import annotations

import numpy as np

from .casting import HALF_PRECISION, is_half_precision, resolve_dtype
from .cupy_backend import MixedPrecisionBackend

__all__ = [
    "HALF_PRECISION",
    "DynamicLossScaler",
    "MixedPrecisionBackend",
    "is_half_precision",
    "resolve_dtype",
    "with_dtype",
]


def with_dtype(backend, dtype):
    """``backend`` computing in ``dtype``: the backend itself for float32 (or
    None), its mixed-precision view for float16 / bfloat16 (cupy only)."""
    from . import backend as get_backend

    ops = get_backend(backend)
    if resolve_dtype(dtype).name == "float32":
        return ops
    if not hasattr(ops, "with_dtype"):
        raise ValueError(
            f"mixed precision ({np.dtype(resolve_dtype(dtype)).name}) needs the cupy "
            f"backend, not {ops.name}"
        )
    return ops.with_dtype(dtype)


def _all_finite(x):
    """Whether every value of x (a NumPy or CuPy array) is finite, as a 0-d array."""
    if isinstance(x, np.ndarray):
        return np.isfinite(x).all()
    import cupy

    return cupy.isfinite(x).all()


class DynamicLossScaler:
    """Loss scaling for float16 training, with PyTorch GradScaler's policy:
    multiply the loss gradient by ``scale``; before the optimizer step divide
    the gradients by it and skip the step if any is inf or nan; halve the scale
    (backoff_factor) after such a step, double it (growth_factor) after
    growth_interval steps in a row without one. Works on any backend's arrays.

    ``found_inf`` holds the last unscale's verdict; ``skipped`` counts the
    skipped steps; state_dict() / load_state_dict() go into checkpoints.
    """

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        min_scale: float = 1.0,
        max_scale: float = 2.0**24,
    ):
        if not (
            growth_factor > 1.0
            and 0.0 < backoff_factor < 1.0
            and growth_interval >= 1
            and 0.0 < min_scale <= init_scale <= max_scale
        ):
            raise ValueError(
                "DynamicLossScaler: need growth_factor > 1, 0 < backoff_factor < 1, "
                "growth_interval >= 1 and 0 < min_scale <= init_scale <= max_scale"
            )
        self.scale = float(init_scale)
        self.growth_factor, self.backoff_factor = float(growth_factor), float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.clean_steps = 0
        self.skipped = 0
        self.found_inf = False

    def unscale(self, params) -> bool:
        """Divides every gradient (of Parameters, or arrays) by the scale in
        place; returns True when all of them are finite. One read back to the
        host for all the gradients together."""
        grads = [getattr(p, "grad", p) for p in params]
        grads = [g for g in grads if g is not None]
        if not grads:
            self.found_inf = False
            return True
        inverse = 1.0 / self.scale
        finite = True
        for g in grads:
            g *= g.dtype.type(inverse)
            finite = finite & _all_finite(g)  # stays on the device until bool()
        self.found_inf = not bool(finite)
        return not self.found_inf

    def update(self, found_inf=None) -> None:
        """Adjusts the scale after a step (found_inf: default the last unscale's verdict)."""
        found_inf = self.found_inf if found_inf is None else bool(found_inf)
        if found_inf:
            self.scale = max(self.scale * self.backoff_factor, self.min_scale)
            self.clean_steps = 0
            self.skipped += 1
            return
        self.clean_steps += 1
        if self.clean_steps >= self.growth_interval:
            self.scale = min(self.scale * self.growth_factor, self.max_scale)
            self.clean_steps = 0

    def step(self, optimizer, params) -> bool:
        """unscale, optimizer.step() unless a gradient overflowed, update;
        returns whether the step was taken."""
        taken = self.unscale(params)
        if taken:
            optimizer.step()
        self.update(not taken)
        return taken

    def state_dict(self) -> dict:
        return {"scale": self.scale, "clean_steps": self.clean_steps, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        scale, clean = float(state["scale"]), int(state["clean_steps"])
        if not (self.min_scale <= scale <= self.max_scale) or clean < 0:
            raise ValueError(f"DynamicLossScaler: bad state {state!r}")
        self.scale, self.clean_steps, self.skipped = scale, clean, int(state.get("skipped", 0))
