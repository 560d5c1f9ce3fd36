"""The cupy backend (NVIDIA GPUs). CuPy is imported lazily, only when this
backend is asked for, so machines without it never pay for the import."""

from __future__ import annotations


def load_cupy_backend():
    from . import BackendUnavailable

    try:
        import cupy
    except ImportError as e:
        raise BackendUnavailable(
            "the cupy backend needs CuPy: pip install 'ferroformer[cuda12]' (or [cuda13])"
        ) from e
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise BackendUnavailable("the cupy backend found no CUDA GPU")
    except cupy.cuda.runtime.CUDARuntimeError as e:
        raise BackendUnavailable(f"the cupy backend cannot use a GPU: {e}") from e
    raise BackendUnavailable("the cupy backend is not implemented yet in this build")
