"""Type stubs of ferroformer._native, the PyO3 bindings of the Rust kernels.

Callers are the rust backend (backends/rust_backend.py), which checks dtypes
and shapes and hands in C-contiguous, aligned float32 arrays (int64 ids and
targets, bool masks). Every function raises RuntimeError naming itself if
the Rust code panics (a bug); ``_force_panic`` does so on purpose, for tests."""

from typing import Optional, Tuple

import numpy as np
import numpy.typing as npt

_F32 = npt.NDArray[np.float32]
_I64 = npt.NDArray[np.int64]
_Mask = npt.NDArray[np.bool_]

__version__: str
__all__ = [
    "__version__",
    "_force_panic",
    "adamw_step",
    "attention_backward",
    "attention_forward",
    "cross_entropy_backward",
    "cross_entropy_forward",
    "embedding_backward",
    "embedding_forward",
    "gelu_backward",
    "gelu_forward",
    "get_num_threads",
    "layernorm_backward",
    "layernorm_forward",
    "linear_backward",
    "linear_forward",
    "matmul",
    "quantized_linear_forward",
    "relu_backward",
    "relu_forward",
    "rmsnorm_backward",
    "rmsnorm_forward",
    "rope_backward",
    "rope_forward",
    "set_num_threads",
    "silu_backward",
    "silu_forward",
    "simd_level",
    "softmax_backward",
    "softmax_forward",
    "swiglu_backward",
    "swiglu_forward",
]

def _force_panic(in_pool: bool = False) -> None: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def simd_level() -> str: ...
def matmul(a: _F32, b: _F32, trans_a: bool = False, trans_b: bool = False) -> _F32: ...
def linear_forward(x: _F32, w: _F32, b: Optional[_F32] = None) -> _F32: ...
def linear_backward(
    dy: _F32, x: _F32, w: _F32, has_bias: bool = True
) -> Tuple[_F32, _F32, Optional[_F32]]: ...
def quantized_linear_forward(
    x: _F32,
    qweight: npt.NDArray[np.uint8],
    qtype: str,
    b: Optional[_F32] = None,
    int8_activations: bool = False,
) -> _F32: ...
def softmax_forward(x: _F32, scale: float, causal: bool) -> _F32: ...
def softmax_backward(dy: _F32, y: _F32, scale: float) -> _F32: ...
def layernorm_forward(x: _F32, gamma: _F32, beta: _F32, eps: float) -> Tuple[_F32, _F32, _F32]: ...
def layernorm_backward(
    dy: _F32, x: _F32, gamma: _F32, mean: _F32, rstd: _F32
) -> Tuple[_F32, _F32, _F32]: ...
def rmsnorm_forward(x: _F32, gamma: _F32, eps: float) -> Tuple[_F32, _F32]: ...
def rmsnorm_backward(dy: _F32, x: _F32, gamma: _F32, rstd: _F32) -> Tuple[_F32, _F32]: ...
def gelu_forward(x: _F32, approximate: str) -> _F32: ...
def gelu_backward(dy: _F32, x: _F32, approximate: str) -> _F32: ...
def relu_forward(x: _F32) -> _F32: ...
def relu_backward(dy: _F32, x: _F32) -> _F32: ...
def silu_forward(x: _F32) -> _F32: ...
def silu_backward(dy: _F32, x: _F32) -> _F32: ...
def swiglu_forward(gate: _F32, up: _F32) -> _F32: ...
def swiglu_backward(dh: _F32, gate: _F32, up: _F32) -> Tuple[_F32, _F32]: ...
def attention_forward(
    q: _F32,
    k: _F32,
    v: _F32,
    causal: bool,
    scale: float,
    key_padding_mask: Optional[_Mask] = None,
    kv_len: Optional[int] = None,
) -> Tuple[_F32, _F32]: ...
def attention_backward(
    do_: _F32,
    q: _F32,
    k: _F32,
    v: _F32,
    o: _F32,
    lse: _F32,
    causal: bool,
    scale: float,
    key_padding_mask: Optional[_Mask] = None,
) -> Tuple[_F32, _F32, _F32]: ...
def cross_entropy_forward(
    logits: _F32, targets: _I64, ignore_index: int, label_smoothing: float
) -> Tuple[float, _F32]: ...
def cross_entropy_backward(
    logits: _F32, targets: _I64, lse: _F32, ignore_index: int, label_smoothing: float, grad: float
) -> _F32: ...
def embedding_forward(weight: _F32, ids: _I64) -> _F32: ...
def embedding_backward(dy: _F32, ids: _I64, num_embeddings: int) -> _F32: ...
def rope_forward(x: _F32, cos: _F32, sin: _F32) -> _F32: ...
def rope_backward(dy: _F32, cos: _F32, sin: _F32) -> _F32: ...
def adamw_step(
    param: _F32,
    grad: _F32,
    m: _F32,
    v: _F32,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    step: int,
) -> None: ...
