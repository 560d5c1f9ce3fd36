"""Initialisers: each returns a new host (NumPy) array and takes ``rng=None``
(anything ``np.random.default_rng`` accepts), so that a seed rebuilds a model exactly.

    w = xavier_uniform((out, in), rng=0)
    w = scaled_normal((d, d), n_layers=12, rng=rng)   # GPT-2's residual projections
"""

from __future__ import annotations

import math

import numpy as np


def _fans(shape):
    """(fan_in, fan_out) of a weight stored (out, in), as PyTorch counts them."""
    if len(shape) < 2:
        return shape[0], shape[0]
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def normal(shape, std=0.02, rng=None, dtype=np.float32):
    return (np.random.default_rng(rng).standard_normal(shape) * std).astype(dtype)


def scaled_normal(shape, n_layers, std=0.02, rng=None, dtype=np.float32):
    """N(0, std / sqrt(2 n_layers)): output projections that feed the residual
    stream, so its variance does not grow with depth (GPT-2)."""
    return normal(shape, std / math.sqrt(2 * n_layers), rng, dtype)


def xavier_uniform(shape, gain=1.0, rng=None, dtype=np.float32):
    fan_in, fan_out = _fans(shape)
    a = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return np.random.default_rng(rng).uniform(-a, a, shape).astype(dtype)


def xavier_normal(shape, gain=1.0, rng=None, dtype=np.float32):
    fan_in, fan_out = _fans(shape)
    return normal(shape, gain * math.sqrt(2.0 / (fan_in + fan_out)), rng, dtype)


def zeros(shape, dtype=np.float32):
    return np.zeros(shape, dtype)


def ones(shape, dtype=np.float32):
    return np.ones(shape, dtype)
