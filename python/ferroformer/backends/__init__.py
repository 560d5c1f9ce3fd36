"""Choosing a backend: ``backend(name)``, ``set_backend(name)``,
``available_backends()``.

The default is the fastest backend that works here: cupy where CuPy and a
GPU are usable, else rust, else numpy (with a warning that says why).
``FERROFORMER_BACKEND`` names the process default.
"""

from __future__ import annotations

import os
import warnings
from typing import Dict, List, Optional, Union

from .base import Backend, BackendUnavailable

NAMES = ("numpy", "rust", "cupy")

_instances: Dict[str, Backend] = {}
_why_not: Dict[str, str] = {}
_default: Optional[str] = None


def to_host(x):
    """The array as a host NumPy array: a CuPy array is copied off the GPU, a
    NumPy array is returned as it is."""
    import numpy as np

    return np.asarray(x.get() if hasattr(x, "get") and not isinstance(x, np.ndarray) else x)


def _load(name: str) -> Backend:
    if name == "numpy":
        from .numpy_backend import NumpyBackend

        return NumpyBackend()
    if name == "rust":
        try:
            from .rust_backend import RustBackend
        except ImportError as e:
            raise BackendUnavailable(
                f"the rust backend needs the compiled module ferroformer._native, which did not "
                f"import ({e}); reinstall ferroformer with `pip install .` from a source checkout"
            ) from e
        return RustBackend()
    if name == "cupy":
        from .cupy_backend import load_cupy_backend

        return load_cupy_backend()
    raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(NAMES)}")


def backend(name: Union[str, Backend, None] = None) -> Backend:
    """The backend called ``name`` (``"numpy"``, ``"rust"`` or ``"cupy"``), or the default."""
    if isinstance(name, Backend):
        return name
    if name is None:
        name = _default_name()
    name = name.lower()
    if name not in _instances:
        if name in _why_not:
            raise BackendUnavailable(_why_not[name])
        try:
            _instances[name] = _load(name)
        except BackendUnavailable as e:
            _why_not[name] = str(e)
            raise
    return _instances[name]


def available_backends() -> List[str]:
    """The backends that work here, e.g. ``["numpy", "rust"]``."""
    out = []
    for name in NAMES:
        try:
            backend(name)
        except BackendUnavailable:
            continue
        out.append(name)
    return out


def set_backend(name: Union[str, Backend]) -> Backend:
    """Makes ``name`` the process default and returns it."""
    global _default
    b = backend(name)
    _default = b.name
    return b


def _default_name() -> str:
    global _default
    if _default is not None:
        return _default
    env = os.environ.get("FERROFORMER_BACKEND")
    if env:
        _default = backend(env).name
        return _default
    for name in ("cupy", "rust"):
        try:
            backend(name)
        except BackendUnavailable:
            continue
        _default = name
        return name
    warnings.warn(
        "ferroformer is using the slow numpy backend: " + _why_not.get("rust", "rust unavailable"),
        RuntimeWarning,
        stacklevel=3,
    )
    _default = "numpy"
    return _default
