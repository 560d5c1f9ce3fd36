"""Compile-checks every CUDA kernel of the cupy backend with NVRTC alone: no
GPU and no CuPy needed, only libnvrtc (``pip install nvidia-cuda-nvrtc-cu12``).
Skipped where libnvrtc cannot be found.

Each kernel family is compiled as the backend compiles it (the same source,
options and template name expressions, plus the options CuPy adds) for
several GPU generations; a warning fails the test like an error does, and so
does ptxas reporting register spills. With the CUDA headers at hand
(``pip install nvidia-cuda-runtime-cu12``) the float16 / bfloat16
instantiations are compiled too.

    python -m pytest tests/test_cuda_sources.py -s    # prints ptxas' register counts
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import re

import pytest

from ferroformer.backends import cuda

# What CuPy's RawModule adds to the backend's options (cupy/cuda/compiler.py).
CUPY_OPTIONS = ("-ftz=true", "--device-as-default-execution-space")
ARCHS = ("sm_75", "sm_80", "sm_90")


def _nvidia_wheel_dirs(sub):
    try:
        import nvidia
    except ImportError:
        return []
    return [d for root in nvidia.__path__ for d in glob.glob(os.path.join(root, "*", sub))]


def _load_nvrtc():
    candidates = [
        p
        for d in _nvidia_wheel_dirs("lib")
        for p in sorted(glob.glob(os.path.join(d, "libnvrtc.so.*")))
    ]
    found = ctypes.util.find_library("nvrtc")
    if found:
        candidates.append(found)
    for path in candidates:
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


NVRTC = _load_nvrtc()
pytestmark = pytest.mark.skipif(
    NVRTC is None, reason="libnvrtc not found (pip install nvidia-cuda-nvrtc-cu12)"
)


def _check(status, what):
    if status != 0:
        NVRTC.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise AssertionError(f"{what}: {NVRTC.nvrtcGetErrorString(status).decode()}")


def compile_family(family, dtype, options):
    """Compiles one family with NVRTC; returns (log, {name expression: lowered name})."""
    prog = ctypes.c_void_p()
    code = cuda.source(family).encode()
    _check(
        NVRTC.nvrtcCreateProgram(ctypes.byref(prog), code, f"{family}.cu".encode(), 0, None, None),
        "nvrtcCreateProgram",
    )
    names = cuda.name_expressions(family, dtype)
    try:
        for name in names:
            _check(NVRTC.nvrtcAddNameExpression(prog, name.encode()), f"add {name}")
        opts = [o.encode() for o in options]
        status = NVRTC.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        NVRTC.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        NVRTC.nvrtcGetProgramLog(prog, log)
        log = log.value.decode(errors="replace")
        assert status == 0, f"{family} ({dtype}, {' '.join(options)}) does not compile:\n{log}"
        lowered = {}
        for name in names:
            out = ctypes.c_char_p()
            _check(
                NVRTC.nvrtcGetLoweredName(prog, name.encode(), ctypes.byref(out)),
                f"lowered name of {name}",
            )
            lowered[name] = out.value.decode()
        return log, lowered
    finally:
        NVRTC.nvrtcDestroyProgram(ctypes.byref(prog))


def _assert_clean(log, what):
    problems = [
        line for line in log.splitlines() if re.search(r"warning|[1-9]\d* bytes spill", line)
    ]
    assert not problems, f"{what}:\n" + "\n".join(problems)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("family", sorted(cuda.FAMILIES))
def test_family_compiles_float32(family, arch):
    options = (*cuda.options("float32"), *CUPY_OPTIONS, f"-arch={arch}", "-Xptxas=-v")
    log, lowered = compile_family(family, "float32", options)
    _assert_clean(log, f"{family} on {arch}")
    assert len(lowered) == len(cuda.FAMILIES[family])
    print(f"\n{family} {arch}\n{log}")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("family", sorted(cuda.FAMILIES))
def test_family_compiles_half_types(family, dtype):
    headers = [
        d for d in _nvidia_wheel_dirs("include") if os.path.exists(os.path.join(d, "cuda_bf16.h"))
    ]
    if not headers:
        pytest.skip("CUDA headers not found (pip install nvidia-cuda-runtime-cu12)")
    options = (*cuda.options(dtype), *CUPY_OPTIONS, "-arch=sm_80", f"-I{headers[0]}")
    log, _ = compile_family(family, dtype, options)
    _assert_clean(log, f"{family} ({dtype})")


def test_every_kernel_is_listed():
    """Each __global__ template in the sources is instantiated by some name expression."""
    for family, templates in cuda.FAMILIES.items():
        body = cuda.source(family).split(f'#line 1 "{family}.cu"', 1)[1]
        defined = set(re.findall(r"__global__\s+void\s+(\w+)", body))
        listed = {t.split("<", 1)[0] for t in templates}
        assert defined == listed, f"{family}: defined {sorted(defined)}, listed {sorted(listed)}"
