"""Runs the cupy backend's CUDA kernels on the CPU: their CUDA C++ compiled by
g++ with tests/cuda_host_shim.h, which makes every CUDA thread a fiber and
checks barriers, warp-wide operations, ldmatrix / mma fragments and cp.async
as the kernels run (see the shim's header). Used by cuda_emulator.py for the
families in HOST_FAMILIES, so that the backend's real launches run the
kernels' real thread-level code, without a GPU.

    module = host_module("flash_attention", "float32")
    module.launch("attention_forward_simt<float, 64>", grid, block, shared_bytes, args)
    HostModule(code, ["my_kernel<float>"]).launch(...)   # any source (the harness's own tests)

Needs Linux on x86-64 and g++ (C++17, _Float16): ``unavailable()`` says why
not. Libraries are cached by the hash of their source in the temp directory.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ferroformer.backends import cuda

SHIM = Path(__file__).with_name("cuda_host_shim.h")
HOST_FAMILIES = ("flash_attention", "flash_attention_mma")
CXX = os.environ.get("CXX", "g++")
FLAGS = (
    "-std=c++17",
    "-O2",
    "-shared",
    "-fPIC",
    "-DFERRO_HOST",
    "-DFERRO_HALF_TYPES",
    "-Wno-unknown-pragmas",
    "-ffp-contract=off",
)
SCALAR_CTYPES = {np.int32: ctypes.c_int32, np.int64: ctypes.c_int64, np.float32: ctypes.c_float}


@functools.cache
def unavailable():
    """None where kernels can run on the host, else why not."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return (
            f"host kernels need Linux on x86-64 (this is {platform.system()} {platform.machine()})"
        )
    if shutil.which(CXX) is None:
        return f"host kernels need a C++ compiler ({CXX} not found)"
    return None


def family_dtypes(family):
    return (
        cuda.TENSOR_CORE_DTYPES
        if family in cuda.TENSOR_CORE_FAMILIES
        else tuple(cuda.STORAGE_TYPES)
    )


@functools.cache
def kernel_index():
    """name expression -> (family, dtype) for every kernel that runs on the host."""
    return {
        name: (family, dtype)
        for family in HOST_FAMILIES
        for dtype in family_dtypes(family)
        for name in cuda.name_expressions(family, dtype)
    }


def _program(code, names):
    launchers = "\n".join(
        f'extern "C" int ferro_launch_{i}(const unsigned* grid, const unsigned* block, size_t shared,\n'
        f"                               void** args, int order, char* error, size_t error_len) {{\n"
        f"    return ferro_host::launch(grid, block, shared, order,\n"
        f"        [args] {{ ferro_host::call_kernel(&{name}, args); }}, error, error_len);\n}}"
        for i, name in enumerate(names)
    )
    return f'#include "{SHIM}"\n{code}\n{launchers}\n'


class HostModule:
    """Kernels of CUDA C++ source ``code`` (compiled after the shim), named by
    their name expressions, built for the host."""

    def __init__(self, code, names, tag="kernels"):
        self.names = list(names)
        program = _program(code, self.names)
        key = hashlib.sha256(
            "\0".join((program, SHIM.read_text(), CXX, *FLAGS)).encode()
        ).hexdigest()[:24]
        build = Path(tempfile.gettempdir()) / "ferroformer-cuda-host"
        build.mkdir(exist_ok=True)
        library = build / f"{tag}-{key}.so"
        if not library.exists():
            (build / "cuda_fp16.h").write_text("// host stand-in: the shim defines __half\n")
            (build / "cuda_bf16.h").write_text("// host stand-in: the shim defines __nv_bfloat16\n")
            source = build / f"{tag}-{key}.cpp"
            source.write_text(program)
            partial = library.with_suffix(f".{os.getpid()}.tmp")
            result = subprocess.run(
                [CXX, *FLAGS, f"-I{build}", str(source), "-o", str(partial)],
                capture_output=True,
                text=True,
            )
            if result.returncode:
                raise RuntimeError(f"host build of {tag} failed:\n{result.stderr[-6000:]}")
            os.replace(partial, library)
        self.library = ctypes.CDLL(str(library))
        self.functions = {}
        for i, name in enumerate(self.names):
            fn = getattr(self.library, f"ferro_launch_{i}")
            fn.restype = ctypes.c_int
            fn.argtypes = [
                ctypes.POINTER(ctypes.c_uint),
                ctypes.POINTER(ctypes.c_uint),
                ctypes.c_size_t,
                ctypes.POINTER(ctypes.c_void_p),
                ctypes.c_int,
                ctypes.c_char_p,
                ctypes.c_size_t,
            ]
            self.functions[name] = fn

    def launch(self, name, grid, block, shared_mem, args, order=0):
        """args: for a pointer parameter its address (int, 0 for null), else a
        NumPy scalar of the parameter's exact type. order 0 runs a block's
        threads in ascending order, 1 in descending order."""
        values = []
        for a in args:
            if isinstance(a, (int, np.uint64)) and not isinstance(a, (np.int32, np.int64)):
                values.append(ctypes.c_uint64(int(a)))
            else:
                values.append(SCALAR_CTYPES[type(a)](a.item()))
        argv = (ctypes.c_void_p * max(1, len(values)))(*[ctypes.addressof(v) for v in values])
        g = (ctypes.c_uint * 3)(*grid, *(1,) * (3 - len(grid)))
        b = (ctypes.c_uint * 3)(*block, *(1,) * (3 - len(block)))
        error = ctypes.create_string_buffer(2048)
        if self.functions[name](g, b, shared_mem, argv, order, error, len(error)):
            raise AssertionError(f"{name} on the host: {error.value.decode(errors='replace')}")


@functools.cache
def host_module(family, dtype):
    """The kernels of one family of backends/cuda/ for one storage type."""
    return HostModule(
        cuda.source(family), cuda.name_expressions(family, dtype), f"{family}-{dtype}"
    )
