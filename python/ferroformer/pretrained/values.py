"""Checks of the numbers a loader reads from a model's config.json or GGUF
metadata, before any of them sizes an allocation: one helper, so that every
loader refuses a bad value with the same message."""

from __future__ import annotations

import math


def positive(v, kind, what: str, where: str, *, low: int = 1):
    """v when it is a positive ``kind``: an int (not a bool) >= low, or a finite
    float (or int) > 0; else ValueError "{where}: {what} must be a positive ...\""""
    if kind is int:
        ok = isinstance(v, int) and not isinstance(v, bool) and v >= low
    else:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
    if not ok:
        raise ValueError(f"{where}: {what} must be a positive {kind.__name__}, got {v!r:.80}")
    return v
