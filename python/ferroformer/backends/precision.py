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

The rules of ``MixedPrecisionBackend`` (the op contract is otherwise unchanged):
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

from . import _checks as C
from .cupy_backend import CupyBackend, bfloat16_dtype

HALF_PRECISION = ("float16", "bfloat16")


def resolve_dtype(dtype, backend=None) -> np.dtype:
    """``dtype`` (a name, NumPy dtype or ml_dtypes type; None means float32) as
    a NumPy dtype, checked against what ``backend`` can store."""
    if dtype is None:
        return np.dtype(np.float32)
    if isinstance(dtype, str) and dtype.lower() == "bfloat16":
        bf16 = bfloat16_dtype()
        if bf16 is None:
            raise ValueError(
                "bfloat16 needs the ml_dtypes package (pip install ml_dtypes) and CuPy >= 14"
            )
        dtype = bf16
    dtype = np.dtype(dtype)
    if dtype.name not in ("float32", *HALF_PRECISION):
        raise ValueError(f"compute dtype must be float32, float16 or bfloat16, got {dtype}")
    if backend is not None and dtype not in backend.float_dtypes:
        why = " (bfloat16 needs ml_dtypes and CuPy >= 14)" if dtype.name == "bfloat16" else ""
        raise ValueError(f"the {backend.name} backend cannot compute in {dtype}{why}")
    return dtype


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


def is_half_precision(dtype) -> bool:
    """Whether ``dtype`` names float16 or bfloat16 (what ``with_dtype`` turns into mixed precision)."""
    if dtype is None:
        return False
    name = dtype.lower() if isinstance(dtype, str) else np.dtype(dtype).name
    return name in HALF_PRECISION


class MixedPrecisionBackend(CupyBackend):
    """The cupy backend computing in ``compute_dtype`` (float16 or bfloat16)
    with float32 master weights; the rules are in the module docstring. Made
    by ``CupyBackend.with_dtype``: it shares its backend's compiled kernels and
    cuBLAS state."""

    def __init__(self, base: CupyBackend, dtype):
        self.__dict__.update(base.__dict__)
        self.base = base
        self.compute_dtype = np.dtype(dtype)
        self.float_dtypes = (np.dtype(np.float32), self.compute_dtype)

    def __repr__(self) -> str:
        return f"<ferroformer backend 'cupy' computing in {self.compute_dtype.name}, float32 master weights>"

    def with_dtype(self, dtype):
        return self.base.with_dtype(dtype)

    def _float(self, op: str, **arrays):
        for name, x in arrays.items():
            if x is None:
                continue
            C.require_array(op, name, x, self.xp.ndarray)
            if x.dtype not in self.float_dtypes:
                raise TypeError(
                    f"{op}: {name} has dtype {x.dtype}, but the cupy backend in "
                    f"{self.compute_dtype.name} mixed precision takes float32 or "
                    f"{self.compute_dtype.name}; cast it with .astype(...)"
                )
        return self.compute_dtype

    def _compute(self, x):
        """x in the compute dtype (x itself when it already is)."""
        return x if x.dtype == self.compute_dtype else x.astype(self.compute_dtype)

    def _matmul(self, a, b, trans_a, trans_b):
        return super()._matmul(self._compute(a), self._compute(b), trans_a, trans_b)

    def _linear_forward(self, x, w, b):
        return super()._linear_forward(self._compute(x), self._compute(w), b)

    def _linear_backward(self, dy, x, w, has_bias, grad_dtype=None):
        return super()._linear_backward(
            self._compute(dy), self._compute(x), self._compute(w), has_bias, w.dtype
        )

    def _softmax_forward(self, x, scale, causal):
        return super()._softmax_forward(self._compute(x), scale, causal)

    def _softmax_backward(self, dy, y, scale):
        return super()._softmax_backward(self._compute(dy), self._compute(y), scale)

    def _layernorm_forward(self, x, gamma, beta, eps):
        return super()._layernorm_forward(
            self._compute(x), self._compute(gamma), self._compute(beta), eps
        )

    def _layernorm_backward(self, dy, x, gamma, mean, rstd):
        return self._norm_backward(
            self._compute(dy), self._compute(x), self._compute(gamma), mean, rstd, True, gamma.dtype
        )

    def _rmsnorm_forward(self, x, gamma, eps):
        return super()._rmsnorm_forward(self._compute(x), self._compute(gamma), eps)

    def _rmsnorm_backward(self, dy, x, gamma, rstd):
        dx, dgamma, _ = self._norm_backward(
            self._compute(dy),
            self._compute(x),
            self._compute(gamma),
            None,
            rstd,
            False,
            gamma.dtype,
        )
        return dx, dgamma

    def _act_forward(self, act, x):
        return super()._act_forward(act, self._compute(x))

    def _act_backward(self, act, dy, x):
        return super()._act_backward(act, self._compute(dy), self._compute(x))

    def _swiglu_forward(self, gate, up):
        return super()._swiglu_forward(self._compute(gate), self._compute(up))

    def _swiglu_backward(self, dh, gate, up):
        return super()._swiglu_backward(self._compute(dh), self._compute(gate), self._compute(up))

    def _attention_forward(self, q, k, v, causal, scale, mask):
        return super()._attention_forward(
            self._compute(q), self._compute(k), self._compute(v), causal, scale, mask
        )

    def _attention_backward(self, do, q, k, v, o, lse, causal, scale, mask):
        do, q, k, v, o = (self._compute(x) for x in (do, q, k, v, o))
        return super()._attention_backward(do, q, k, v, o, lse, causal, scale, mask)

    def _cross_entropy_forward(self, logits, targets, ignore_index, label_smoothing):
        return super()._cross_entropy_forward(
            self._compute(logits), targets, ignore_index, label_smoothing
        )

    def _cross_entropy_backward(self, logits, targets, lse, ignore_index, label_smoothing, grad):
        return super()._cross_entropy_backward(
            self._compute(logits), targets, lse, ignore_index, label_smoothing, grad
        )

    def _embedding_forward(self, weight, ids):
        return self._compute(super()._embedding_forward(weight, ids))

    def _embedding_backward(self, dy, ids, num_embeddings):
        return super()._embedding_backward(dy.astype(np.float32, copy=False), ids, num_embeddings)

    def _rope(self, x, cos, sin, sin_sign):
        return super()._rope(self._compute(x), self._compute(cos), self._compute(sin), sin_sign)

    def _adamw_step(self, param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
        # (Backend.adamw_step has checked that m and v have param's dtype)
        super()._adamw_step(
            param,
            grad.astype(param.dtype, copy=False),
            m,
            v,
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            step,
        )


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
