"""ferroformer: transformers on NumPy arrays with Rust kernels.

    import ferroformer as ff
    ops = ff.backend("rust")        # "numpy", "rust" or "cupy"; ff.backend() is the default
    y = ops.softmax_forward(x, causal=True)

See DESIGN.md for the op contract every backend implements.
"""

from __future__ import annotations

from ._malloc import tune_malloc
from .backends import (
    Backend,
    BackendUnavailable,
    available_backends,
    backend,
    set_backend,
)

__version__ = "0.1.0"

tune_malloc()  # see _malloc.py; FERROFORMER_MALLOC_TUNING=0 skips it


def set_num_threads(n: int) -> None:
    """Sizes the thread pool of the rust kernels (``0``: one per core)."""
    from . import _native

    if n < 0:
        raise ValueError(f"set_num_threads: n must be >= 0, got {n}")
    _native.set_num_threads(int(n))


def get_num_threads() -> int:
    """The size of the rust kernels' thread pool."""
    from . import _native

    return _native.get_num_threads()


def simd_level() -> str:
    """The instruction set the rust kernels run on this CPU: "avx512", "avx2" or
    "portable" (chosen once, at the first call, from a run-time CPU check)."""
    from . import _native

    return _native.simd_level()


__all__ = [
    "Backend",
    "BackendUnavailable",
    "available_backends",
    "backend",
    "get_num_threads",
    "set_backend",
    "set_num_threads",
    "simd_level",
]
