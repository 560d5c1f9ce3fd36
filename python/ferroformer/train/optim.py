"""Optimizers: ``SGD`` (momentum, optional Nesterov), ``Adam`` and ``AdamW``
(both through the backend's fused ``adamw_step``), ``grad_norm`` and ``clip_grad_norm``.
Every hyper-parameter is checked when set: a non-finite or out-of-range value is
a ``ValueError`` naming it.

    opt = AdamW(model, lr=3e-4, weight_decay=0.1)     # decays matrices only (ndim >= 2)
    norm = clip_grad_norm(model.parameters(), 1.0)
    opt.lr = schedule(opt.step_count + 1); opt.step(); model.zero_grad()

``state_tensors()`` / ``hyper()`` are what checkpoints store; a parameter is
named as in ``model.named_parameters()``.
"""

from __future__ import annotations

import math
from typing import Dict, List, Tuple

from .checks import real


def _named(params) -> List[Tuple[str, object]]:
    if hasattr(params, "named_parameters"):
        return list(params.named_parameters())
    params = list(params)
    if params and isinstance(params[0], tuple):
        return params
    return [(str(i), p) for i, p in enumerate(params)]


class Optimizer:
    slots: Tuple[str, ...] = ()

    def __init__(self, params, lr: float, ops=None):
        """params: a Module, Parameters, or (name, Parameter) pairs; ops: the backend
        (a Module's own when None, else the default)."""
        from .. import backends

        self.ops = backends.backend(ops if ops is not None else getattr(params, "ops", None))
        self.named = _named(params)
        if not self.named:
            raise ValueError(f"{type(self).__name__}: no parameters to optimise")
        self.lr = lr
        self.step_count = 0
        self.state: Dict[str, Dict[str, object]] = {slot: {} for slot in self.slots}

    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, value) -> None:
        # checked on every assignment: a schedule or a checkpoint sets it too
        self._lr = real(type(self).__name__, "lr", value, low=0)

    def zero_grad(self) -> None:
        for _, p in self.named:
            p.grad = None

    def _slot(self, slot, name, p):
        buf = self.state[slot].get(name)
        if buf is None:
            buf = self.state[slot][name] = self.ops.xp.zeros_like(p.data)
        return buf

    def step(self) -> None:
        self.step_count += 1
        for name, p in self.named:
            if p.grad is not None:
                self._update(name, p)

    def _update(self, name, p) -> None:
        raise NotImplementedError

    # -- checkpoint state -----------------------------------------------------------
    def hyper(self) -> dict:
        """The scalar settings and the step count (JSON-ready)."""
        return {
            "class": type(self).__name__,
            "lr": self.lr,
            "step_count": self.step_count,
            **self._hyper(),
        }

    def _hyper(self) -> dict:
        return {}

    def state_tensors(self) -> Dict[str, object]:
        """{"slot/param name": array} for every allocated buffer."""
        return {
            f"{slot}/{name}": buf for slot, bufs in self.state.items() for name, buf in bufs.items()
        }

    def load_state(self, hyper: dict, tensors: Dict[str, object]) -> None:
        """Restores what hyper() and state_tensors() gave; ValueError on any mismatch."""
        cls = type(self).__name__
        if not isinstance(hyper, dict) or hyper.get("class") != cls:
            raise ValueError(
                f"optimizer state is for {hyper.get('class') if isinstance(hyper, dict) else hyper!r}, "
                f"not {cls}"
            )
        mine = self.hyper()
        if set(hyper) != set(mine):
            raise ValueError(f"{cls} state has keys {sorted(hyper)}, expected {sorted(mine)}")
        for k, v in hyper.items():
            if (
                k != "class"
                and type(v) not in (int, float, bool, type(None))
                and not (isinstance(v, list) and all(isinstance(u, (int, float)) for u in v))
            ):
                raise ValueError(f"{cls} state {k!r} has an odd value {v!r}")
        params = dict(self.named)
        state = {slot: {} for slot in self.slots}
        for key, arr in tensors.items():
            slot, _, name = key.partition("/")
            if slot not in state or name not in params:
                raise ValueError(f"{cls} state has an unexpected tensor {key!r}")
            if tuple(arr.shape) != tuple(params[name].data.shape):
                raise ValueError(
                    f"{cls} state {key!r} has shape {tuple(arr.shape)}, the parameter "
                    f"is {tuple(params[name].data.shape)}"
                )
            state[slot][name] = self.ops.xp.array(
                self.ops.asarray(arr, dtype=params[name].data.dtype), copy=True
            )
        if not isinstance(hyper["step_count"], int) or hyper["step_count"] < 0:
            raise ValueError(f"{cls} state step_count must be a non-negative int")
        self.state = state
        self._set_hyper(hyper)

    def _set_hyper(self, hyper: dict) -> None:
        self.lr = hyper["lr"]
        self.step_count = int(hyper["step_count"])


class SGD(Optimizer):
    """p -= lr * (g + wd p), with momentum buffer b = momentum b + g (+ Nesterov)."""

    slots = ("momentum",)

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        ops=None,
    ):
        super().__init__(params, lr, ops)
        self._set_sgd(momentum, weight_decay, nesterov)

    def _set_sgd(self, momentum, weight_decay, nesterov) -> None:
        cls = type(self).__name__
        self.momentum = real(cls, "momentum", momentum, low=0, high=1, high_open=True)
        self.weight_decay = real(cls, "weight_decay", weight_decay, low=0)
        if not isinstance(nesterov, bool):
            raise TypeError(f"{cls}: nesterov must be a bool, got {type(nesterov).__name__}")
        if nesterov and not self.momentum:
            raise ValueError(f"{cls}: nesterov needs a momentum > 0")
        self.nesterov = nesterov

    def _update(self, name, p):
        g = p.grad
        t = p.data.dtype.type
        if self.weight_decay:
            g = g + t(self.weight_decay) * p.data
        if self.momentum:
            buf = self._slot("momentum", name, p)
            buf *= t(self.momentum)
            buf += g
            g = g + t(self.momentum) * buf if self.nesterov else buf
        p.data -= t(self.lr) * g

    def _hyper(self):
        return {
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "nesterov": self.nesterov,
        }

    def _set_hyper(self, hyper):
        super()._set_hyper(hyper)
        self._set_sgd(hyper["momentum"], hyper["weight_decay"], hyper["nesterov"])


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter), through ``ops.adamw_step``
    (one fused kernel on rust). Weight decay applies to the parameters for which
    ``decay(name, param)`` is true: by default matrices (ndim >= 2), not biases or norms."""

    slots = ("m", "v")

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        decay=None,
        *,
        ops=None,
    ):
        super().__init__(params, lr, ops)
        self._set_adam(betas, eps, weight_decay)
        self.decay = decay or (lambda name, p: p.data.ndim >= 2)

    def _set_adam(self, betas, eps, weight_decay) -> None:
        cls = type(self).__name__
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise ValueError(f"{cls}: betas must be a pair (beta1, beta2), got {betas!r}")
        self.beta1, self.beta2 = (
            real(cls, f"betas[{i}]", b, low=0, high=1, high_open=True) for i, b in enumerate(betas)
        )
        self.eps = real(cls, "eps", eps, low=0, low_open=True)
        self.weight_decay = real(cls, "weight_decay", weight_decay, low=0)

    def _grad(self, p):
        return p.grad

    def _decay(self, name, p):
        return self.weight_decay if self.decay(name, p) else 0.0

    def _update(self, name, p):
        m = self._slot("m", name, p)
        v = self._slot("v", name, p)
        self.ops.adamw_step(
            p.data,
            self._grad(p),
            m,
            v,
            lr=self.lr,
            beta1=self.beta1,
            beta2=self.beta2,
            eps=self.eps,
            weight_decay=self._decay(name, p),
            step=self.step_count,
        )

    def _hyper(self):
        return {
            "betas": [self.beta1, self.beta2],
            "eps": self.eps,
            "weight_decay": self.weight_decay,
        }

    def _set_hyper(self, hyper):
        super()._set_hyper(hyper)
        if not isinstance(hyper["betas"], list):
            raise ValueError(
                f"{type(self).__name__} state betas must be a pair, got {hyper['betas']!r}"
            )
        self._set_adam(hyper["betas"], hyper["eps"], hyper["weight_decay"])


class Adam(AdamW):
    """Adam with classic (coupled, L2) weight decay: g + wd p is fed to the same fused step."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        ops=None,
    ):
        super().__init__(params, lr, betas, eps, weight_decay, decay=lambda n, p: True, ops=ops)

    def _grad(self, p):
        if not self.weight_decay:
            return p.grad
        return p.grad + p.data.dtype.type(self.weight_decay) * p.data

    def _decay(self, name, p):
        return 0.0


def grad_norm(params) -> float:
    """The global L2 norm of all gradients: inf or NaN exactly when a gradient holds one."""
    import numpy as np

    grads = [g.reshape(-1) for g in (p.grad for p in params) if g is not None]
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is retried below
        total = math.sqrt(sum(float(g @ g) for g in grads))
    if not math.isfinite(total):
        # float32 squares overflow from 1.8e19 on; float64 ones cannot from float32 inputs
        total = math.sqrt(sum(float(g.astype("float64") @ g.astype("float64")) for g in grads))
    return total


def clip_grad_norm(params, max_norm: float) -> float:
    """Scales all gradients so that their global L2 norm is at most max_norm (finite, > 0);
    returns the norm before clipping. A non-finite norm leaves the gradients as they are."""
    max_norm = real("clip_grad_norm", "max_norm", max_norm, low=0, low_open=True)
    params = list(params)
    grads = [p.grad for p in params if p.grad is not None]
    total = grad_norm(params)
    if math.isfinite(total) and total > max_norm:
        scale = max_norm / (total + 1e-6)
        for g in grads:
            g *= g.dtype.type(scale)
    return total
