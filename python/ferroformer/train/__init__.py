"""Training: losses, optimizers, schedules, gradient clipping and the ``Trainer``."""

from .losses import CrossEntropyLoss
from .optim import SGD, Adam, AdamW, Optimizer, clip_grad_norm, grad_norm
from .schedules import LRSchedule
from .trainer import NonFiniteError, Trainer

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "CrossEntropyLoss",
    "LRSchedule",
    "NonFiniteError",
    "Optimizer",
    "Trainer",
    "clip_grad_norm",
    "grad_norm",
]
