"""Learning-rate schedules: linear warmup, then cosine, linear or no decay.

    sched = LRSchedule(3e-4, warmup_steps=100, total_steps=2000, decay="cosine", min_lr=3e-5)
    lr = sched(step)          # step counts from 1

Rates are finite and >= 0 with min_lr <= base_lr, and the warmup fits in the run;
anything else is a ``ValueError`` naming the parameter.
"""

from __future__ import annotations

import math

from .checks import integer, real

DECAYS = ("cosine", "linear", "constant")


class LRSchedule:
    def __init__(
        self,
        base_lr: float,
        warmup_steps: int = 0,
        total_steps=None,
        decay: str = "cosine",
        min_lr: float = 0.0,
    ):
        if decay not in DECAYS:
            raise ValueError(f"LRSchedule: decay must be one of {DECAYS}, got {decay!r}")
        if decay != "constant" and total_steps is None:
            raise ValueError(f"LRSchedule: decay {decay!r} needs total_steps")
        self.base_lr = real("LRSchedule", "base_lr", base_lr, low=0)
        self.min_lr = real("LRSchedule", "min_lr", min_lr, low=0, high=self.base_lr)
        self.warmup_steps = integer("LRSchedule", "warmup_steps", warmup_steps, low=0)
        if total_steps is not None:
            total_steps = integer("LRSchedule", "total_steps", total_steps, low=1)
            if self.warmup_steps > total_steps:
                raise ValueError(
                    f"LRSchedule: warmup_steps {self.warmup_steps} is beyond the "
                    f"run's total_steps {total_steps}"
                )
        self.total_steps, self.decay = total_steps, decay

    def __call__(self, step: int) -> float:
        if self.warmup_steps and step <= self.warmup_steps:
            return self.base_lr * step / self.warmup_steps
        if self.decay == "constant":
            return self.base_lr
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, max(0.0, (step - self.warmup_steps) / span))
        if self.decay == "cosine":
            return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (
                1.0 + math.cos(math.pi * progress)
            )
        return self.base_lr - (self.base_lr - self.min_lr) * progress

    @property
    def config(self) -> dict:
        return {
            "base_lr": self.base_lr,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "decay": self.decay,
            "min_lr": self.min_lr,
        }
