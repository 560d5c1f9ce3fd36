"""The CUDA C sources of the cupy backend, and what NVRTC builds from them.

One module per kernel family (``softmax.cu``, ``norm.cu``, ...), each compiled
after ``common.cuh`` (and the headers of ``PRELUDES``) with the template
instantiations listed in ``FAMILIES``, for every storage type. The
tensor-core family of ``TENSOR_CORE_FAMILIES`` is built only for float16 and
bfloat16 on sm_80 and later. Nothing here imports CuPy, so the sources can be
compile-checked by NVRTC alone on a machine without a GPU
(tests/test_cuda_sources.py, tests/test_cupy_attention.py).

    code = source("softmax")
    names = name_expressions("softmax")   # ["softmax_forward<float>", ...]
"""

from __future__ import annotations

import glob
import os
from importlib import resources
from typing import Dict, Iterable, List, Tuple

# The C++ storage type of each dtype. Only float32 is exposed today; the
# others compile with HALF_TYPES_OPTION (and the CUDA half-precision headers).
STORAGE_TYPES: Dict[str, str] = {
    "float32": "float",
    "float16": "__half",
    "bfloat16": "__nv_bfloat16",
}
HALF_TYPES_OPTION = "-DFERRO_HALF_TYPES"

# NVRTC options of the backend; CuPy adds -arch, -ftz=true and
# --device-as-default-execution-space itself.
OPTIONS: Tuple[str, ...] = ()

# D_MAX instantiations of the CUDA-core flash kernels (a head dim D runs on
# the smallest D_MAX >= D), and HEAD_DIM of the tensor-core ones (D % 8 == 0).
SIMT_HEAD_DIMS = (64, 128, 256)
MMA_HEAD_DIMS = (64, 128)

# activation name -> its struct in activation.cu
ACTIVATIONS: Dict[str, str] = {
    "gelu_tanh": "GeluTanh",
    "gelu_erf": "GeluErf",
    "relu": "Relu",
    "silu": "Silu",
}

# family -> the kernel templates it instantiates, {T} standing for the storage type
FAMILIES: Dict[str, Tuple[str, ...]] = {
    "softmax": (
        "softmax_forward<{T}>",
        "softmax_backward<{T}>",
        "attention_backward_scores<{T}>",
    ),
    "norm": (
        "norm_forward<{T}, true>",
        "norm_forward<{T}, false>",
        "norm_backward<{T}, true>",
        "norm_backward<{T}, false>",
        "column_sum<{T}>",
    ),
    "activation": (
        *(
            f"activation_{way}<{{T}}, {act}>"
            for act in ACTIVATIONS.values()
            for way in ("forward", "backward")
        ),
        "swiglu_forward<{T}>",
        "swiglu_backward<{T}>",
    ),
    "loss": ("cross_entropy_forward<{T}>", "cross_entropy_backward<{T}>"),
    "embedding": ("embedding_forward<{T}>", "embedding_backward<{T}>"),
    "rope": ("rope<{T}>",),
    "adamw": ("adamw_step<{T}>",),
    "flash_attention": (
        *(
            f"attention_{kernel}<{{T}}, {d}>"
            for kernel in ("forward_simt", "backward_kv_simt", "backward_q_simt", "decode_partial")
            for d in SIMT_HEAD_DIMS
        ),
        "attention_backward_delta<{T}>",
        "attention_decode_merge<{T}>",
    ),
}

# Families built only for the TENSOR_CORE_DTYPES on sm_TENSOR_CORE_MIN_ARCH and later.
TENSOR_CORE_FAMILIES: Dict[str, Tuple[str, ...]] = {
    "flash_attention_mma": tuple(
        f"attention_{kernel}<{{T}}, {d}>"
        for kernel in ("forward_mma", "backward_kv_mma", "backward_q_mma")
        for d in MMA_HEAD_DIMS
    ),
}
TENSOR_CORE_DTYPES = ("float16", "bfloat16")
TENSOR_CORE_MIN_ARCH = 80

# family -> headers compiled between common.cuh and the family's own file
PRELUDES: Dict[str, Tuple[str, ...]] = {
    "flash_attention": ("flash_common.cuh",),
    "flash_attention_mma": ("flash_common.cuh",),
}


def _read(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def source(family: str) -> str:
    """common.cuh, the family's preludes, then ``family``.cu, with #line marks
    so that compiler messages name the right file and line."""
    files = ("common.cuh", *PRELUDES.get(family, ()), f"{family}.cu")
    return "\n".join(f'#line 1 "{name}"\n{_read(name)}' for name in files)


def name_expressions(family: str, dtype: str = "float32") -> List[str]:
    """The kernels of ``family`` instantiated for ``dtype``, as NVRTC names them."""
    ctype = STORAGE_TYPES[dtype]
    templates = FAMILIES.get(family) or TENSOR_CORE_FAMILIES[family]
    return [template.format(T=ctype) for template in templates]


def options(dtype: str = "float32", include_dirs: Iterable[str] = ()) -> Tuple[str, ...]:
    if dtype == "float32":
        return OPTIONS
    return (*OPTIONS, HALF_TYPES_OPTION, *(f"-I{d}" for d in include_dirs))


def header_dirs(cuda_path=None) -> List[str]:
    """Directories holding the CUDA half-precision headers (cuda_bf16.h), which
    NVRTC needs for float16 / bfloat16: those of the CUDA toolkit wheels
    (nvidia-cuda-runtime-cu12, ...), then ``cuda_path``/include, $CUDA_PATH and
    $CUDA_HOME. Empty where none is found."""
    candidates = []
    try:
        import nvidia

        for root in nvidia.__path__:
            candidates += sorted(glob.glob(os.path.join(root, "*", "include")))
    except ImportError:
        pass
    for base in (cuda_path, os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME")):
        if base:
            candidates.append(os.path.join(base, "include"))
    found = []
    for d in candidates:
        if os.path.exists(os.path.join(d, "cuda_bf16.h")) and d not in found:
            found.append(d)
    return found[:1]
