"""The backends every contract test runs on, as one fixture parameter each
(conftest.py's ``backend``): numpy, the host-array fast backends (rust), the
cupy backend on the CUDA stand-in of cuda_emulator.py ("cupy-emulated", on
every machine) and the real cupy backend (where a GPU is usable). A device
backend is wrapped in ``OnDevice`` so that tests give and get NumPy arrays:
each input goes to the device (a strided input stays strided there), each
result comes back, and in-place updates (adamw_step) are copied back."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import ferroformer as ff


def gpu_unavailable_reason():
    """None where CuPy sees a GPU, else why not."""
    try:
        import cupy
    except Exception as e:
        return f"CuPy does not import ({type(e).__name__})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        return f"no usable GPU ({e})"
    return None if count else "no GPU"


NO_GPU = gpu_unavailable_reason()

# host-array backends (numpy arrays in and out), numpy aside
FAST_BACKENDS = [n for n in ff.available_backends() if n != "numpy" and ff.backend(n).xp is np]
#: the backends that take and return NumPy arrays themselves (models run on them)
HOST_BACKENDS = ["numpy", *FAST_BACKENDS]
#: the ``backend`` fixture's parameters
BACKENDS = ["numpy", *FAST_BACKENDS, "cupy-emulated", *(["cupy"] if NO_GPU is None else [])]


class OnDevice:
    """The cupy backend taking and returning NumPy arrays, for test_ops.py."""

    def __init__(self, ops):
        self.ops = ops
        self.name = ops.name

    def to_device(self, x):
        cp = self.ops.xp
        if not isinstance(x, np.ndarray):
            return x
        if x.flags.c_contiguous or x.size == 0 or min(x.strides) < 0:
            return cp.asarray(x)
        # the same strides on the device, so that strided inputs stay strided
        span = sum((n - 1) * s for n, s in zip(x.shape, x.strides)) + x.itemsize
        buffer = cp.empty(-(-span // x.itemsize), x.dtype)
        dev = cp.lib.stride_tricks.as_strided(buffer, x.shape, x.strides)
        dev[...] = cp.asarray(np.ascontiguousarray(x))
        return dev

    def to_host(self, x):
        if isinstance(x, (tuple, list)):
            return type(x)(self.to_host(y) for y in x)
        if isinstance(x, self.ops.xp.ndarray):
            return x.get()
        return x

    def __getattr__(self, op):
        fn = getattr(self.ops, op)

        def call(*args, **kwargs):
            dev_args = [self.to_device(a) for a in args]
            out = fn(*dev_args, **{k: self.to_device(v) for k, v in kwargs.items()})
            if op == "adamw_step":  # param, m and v were updated in place
                for host, dev in zip(args, dev_args):
                    host[...] = dev.get()
            return self.to_host(out)

        return call


@functools.cache
def _emulated():
    import cuda_emulator

    return OnDevice(cuda_emulator.backend())


def make_backend(name: str):
    """The backend a ``backend`` fixture parameter names (skips "cupy" without a GPU)."""
    if name == "cupy-emulated":
        return _emulated()
    if name == "cupy":
        if NO_GPU is not None:
            pytest.skip(f"cupy backend: {NO_GPU}")
        return OnDevice(ff.backend("cupy"))  # with a GPU present it must load: an error fails
    return ff.backend(name)
