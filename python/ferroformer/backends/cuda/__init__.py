"""The CUDA C sources of the cupy backend, and what NVRTC builds from them.

One module per kernel family (``softmax.cu``, ``norm.cu``, ...), each compiled
after ``common.cuh`` with the template instantiations listed in ``FAMILIES``.
Nothing here imports CuPy, so the sources can be compile-checked by NVRTC
alone on a machine without a GPU (tests/test_cuda_sources.py).

    code = source("softmax")
    names = name_expressions("softmax")   # ["softmax_forward<float>", ...]
"""

from __future__ import annotations

from importlib import resources
from typing import Dict, List, Tuple

# The C++ storage type of each dtype. Only float32 is exposed today; the
# others compile with HALF_TYPES_OPTION (and the CUDA half-precision headers).
STORAGE_TYPES: Dict[str, str] = {"float32": "float", "float16": "__half", "bfloat16": "__nv_bfloat16"}
HALF_TYPES_OPTION = "-DFERRO_HALF_TYPES"

# NVRTC options of the backend; CuPy adds -arch, -ftz=true and
# --device-as-default-execution-space itself.
OPTIONS: Tuple[str, ...] = ()

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
        *(f"activation_{way}<{{T}}, {act}>" for act in ACTIVATIONS.values()
          for way in ("forward", "backward")),
        "swiglu_forward<{T}>",
        "swiglu_backward<{T}>",
    ),
    "loss": ("cross_entropy_forward<{T}>", "cross_entropy_backward<{T}>"),
    "embedding": ("embedding_forward<{T}>", "embedding_backward<{T}>"),
    "rope": ("rope<{T}>",),
    "adamw": ("adamw_step<{T}>",),
}


def _read(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def source(family: str) -> str:
    """common.cuh followed by ``family``.cu, with #line marks so that compiler
    messages name the right file and line."""
    return (f'#line 1 "common.cuh"\n{_read("common.cuh")}\n'
            f'#line 1 "{family}.cu"\n{_read(family + ".cu")}')


def name_expressions(family: str, dtype: str = "float32") -> List[str]:
    """The kernels of ``family`` instantiated for ``dtype``, as NVRTC names them."""
    ctype = STORAGE_TYPES[dtype]
    return [template.format(T=ctype) for template in FAMILIES[family]]


def options(dtype: str = "float32") -> Tuple[str, ...]:
    return OPTIONS if dtype == "float32" else (*OPTIONS, HALF_TYPES_OPTION)
