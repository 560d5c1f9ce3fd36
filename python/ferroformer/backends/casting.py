"""Cast policies: which dtype a backend's ops compute in.

A backend holds one ``CastPolicy`` and asks it, in one place per op input,
what to hand its kernels. ``PLAIN`` is the op contract's rule: an op takes
inputs of one dtype and computes in it. ``CastPolicy("bfloat16")`` (or
float16) is mixed precision with float32 master weights (precision.py
documents the rules): float32 inputs are accepted beside the compute dtype
and cast to it, a parameter's gradient keeps the parameter's dtype, and a
gradient for a parameter the op does not see (embedding_backward) is float32.

This module knows nothing of any backend, so every backend can import it.
"""

from __future__ import annotations

import numpy as np

from . import _checks as C

HALF_PRECISION = ("float16", "bfloat16")
_FLOAT32 = np.dtype(np.float32)


def bfloat16_dtype():
    """NumPy's bfloat16 dtype (from ml_dtypes), or None where it is not installed."""
    try:
        import ml_dtypes
    except ImportError:
        return None
    return np.dtype(ml_dtypes.bfloat16)


def resolve_dtype(dtype, backend=None) -> np.dtype:
    """``dtype`` (a name, NumPy dtype or ml_dtypes type; None means float32) as
    a NumPy dtype, checked against what ``backend`` can store."""
    if dtype is None:
        return _FLOAT32
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


def is_half_precision(dtype) -> bool:
    """Whether ``dtype`` names float16 or bfloat16 (what ``with_dtype`` turns into mixed precision)."""
    if dtype is None:
        return False
    name = dtype.lower() if isinstance(dtype, str) else np.dtype(dtype).name
    return name in HALF_PRECISION


class CastPolicy:
    """The dtypes a backend's ops take and compute in. ``compute_dtype`` None:
    the contract's one-dtype rule, every method below a no-op. A half dtype:
    mixed precision with float32 master weights."""

    def __init__(self, compute_dtype=None):
        self.compute_dtype = None if compute_dtype is None else np.dtype(compute_dtype)

    def floats(self, op: str, arrays: dict, array_type, allowed, backend: str):
        """The contract's dtype check of an op's float arrays; returns the dtype
        the op computes in. Mixed: each array float32 or the compute dtype, in any mix."""
        half = self.compute_dtype
        if half is None:
            return C.floats(op, arrays, array_type, allowed, backend)
        for name, x in arrays.items():
            if x is None:
                continue
            C.require_array(op, name, x, array_type)
            if x.dtype != _FLOAT32 and x.dtype != half:
                raise TypeError(
                    f"{op}: {name} has dtype {x.dtype}, but the {backend} backend in "
                    f"{half.name} mixed precision takes float32 or {half.name}; cast it "
                    f"with .astype(...)"
                )
        return half

    def compute(self, x):
        """x (a float array) in the compute dtype: x itself where it already is."""
        half = self.compute_dtype
        return x if half is None or x.dtype == half else x.astype(half)

    def master(self, x):
        """x as a gradient of float32 master weights: float32 under mixed precision."""
        return x if self.compute_dtype is None else x.astype(_FLOAT32, copy=False)


PLAIN = CastPolicy()
