"""Argument checks shared by the optimizers, schedules, loss and Trainer: a
hyper-parameter of the wrong type is a ``TypeError``, one that is not finite or
lies outside its range a ``ValueError`` naming the owner and the parameter.

    lr = real("AdamW", "lr", lr, low=0)                          # finite, >= 0
    beta = real("AdamW", "betas[0]", b, low=0, high=1, high_open=True)
    n = integer("Trainer", "accum_steps", n, low=1)
"""

from __future__ import annotations

import math
import operator


def _range(low, high, low_open, high_open) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high}"
    return "finite"


def real(
    owner: str,
    name: str,
    value,
    *,
    low=None,
    high=None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a float, if it is a finite real number within the bounds given."""
    if isinstance(value, (bool, str, bytes)):
        raise TypeError(f"{owner}: {name} must be a real number, got {type(value).__name__}")
    try:
        v = float(value)
    except TypeError:
        raise TypeError(
            f"{owner}: {name} must be a real number, got {type(value).__name__}"
        ) from None
    if not (
        math.isfinite(v)
        and (low is None or (v > low if low_open else v >= low))
        and (high is None or (v < high if high_open else v <= high))
    ):
        rule = _range(low, high, low_open, high_open)
        raise ValueError(
            f"{owner}: {name} must be a finite number{'' if rule == 'finite' else ' ' + rule}, "
            f"got {value!r}"
        )
    return v


def integer(owner: str, name: str, value, *, low=None, high=None) -> int:
    """``value`` as an int, if it is an integer (not a bool or a float) within the bounds."""
    if isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be an integer, got bool")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{owner}: {name} must be an integer, got {type(value).__name__}") from None
    if (low is not None and v < low) or (high is not None and v > high):
        raise ValueError(
            f"{owner}: {name} must be an integer {_range(low, high, False, False)}, got {v}"
        )
    return v
