"""The rust backend: the op contract on ferroformer's native CPU kernels.

The checks of ``Backend`` run first; here each op only lays its inputs out
as the kernels expect (C-contiguous, aligned float32, int64 ids, bool masks;
any other layout, Fortran order, strided, negative or zero strides,
unaligned, is copied once, on purpose) and calls into
``ferroformer._native``, which releases the GIL while it works.
"""

from __future__ import annotations

import math

import numpy as np

from .. import _native as N
from .base import Backend


def _c(x):
    """x as the kernels read it: itself when C-contiguous and aligned, else a
    C-contiguous copy (not ``np.ascontiguousarray``, which keeps an unaligned
    array as it is and makes a 0-d one 1-d)."""
    if x is None:
        return None
    f = x.flags
    if f.c_contiguous and f.aligned:
        return x
    return np.array(x, order="C")


def _rows(x):
    """(..., C) → (rows, C) view (or one copy when x is not contiguous)."""
    return _c(x).reshape(math.prod(x.shape[:-1]), x.shape[-1])


class RustBackend(Backend):
    name = "rust"
    xp = np
    float_dtypes = (np.dtype(np.float32),)

    def _matmul(self, a, b, trans_a, trans_b):
        return N.matmul(_c(a), _c(b), trans_a, trans_b)

    def _linear_forward(self, x, w, b):
        y = N.linear_forward(_rows(x), _c(w), _c(b))
        return y.reshape((*x.shape[:-1], w.shape[0]))

    def _linear_backward(self, dy, x, w, has_bias):
        dx, dw, db = N.linear_backward(_rows(dy), _rows(x), _c(w), has_bias)
        return dx.reshape(x.shape), dw, db

    def _quantized_linear_forward(self, x, qweight, qtype, bias, int8):
        """x (rows, in) float32 C-contiguous, qweight (out, row_bytes) uint8 blocks of
        ``qtype`` -> (rows, out), straight from the blocks (rust/kernels/src/quant):
        float mode, each weight row decoded (bit-identical to the reference) and dotted
        in float32; int8 mode, integer dots of the unpacked blocks with x quantized per
        32 values. float64 x and the float types (F32, F16, BF16) go to the NumPy
        reference."""
        # Backend.quantized_linear_forward hands in x as (rows, in) C-contiguous and
        # qtype as the format's name
        if x.dtype != np.float32 or qtype in ("F32", "F16", "BF16"):
            return super()._quantized_linear_forward(x, qweight, qtype, bias, int8)
        return N.quantized_linear_forward(_c(x), _c(qweight), qtype, _c(bias), int8)

    def _softmax_forward(self, x, scale, causal):
        return N.softmax_forward(_c(x), scale, causal)

    def _softmax_backward(self, dy, y, scale):
        return N.softmax_backward(_c(dy), _c(y), scale)

    def _layernorm_forward(self, x, gamma, beta, eps):
        return N.layernorm_forward(_c(x), _c(gamma), _c(beta), eps)

    def _layernorm_backward(self, dy, x, gamma, mean, rstd):
        return N.layernorm_backward(_c(dy), _c(x), _c(gamma), _c(mean), _c(rstd))

    def _rmsnorm_forward(self, x, gamma, eps):
        return N.rmsnorm_forward(_c(x), _c(gamma), eps)

    def _rmsnorm_backward(self, dy, x, gamma, rstd):
        return N.rmsnorm_backward(_c(dy), _c(x), _c(gamma), _c(rstd))

    def _gelu_forward(self, x, approximate):
        return N.gelu_forward(_c(x), approximate)

    def _gelu_backward(self, dy, x, approximate):
        return N.gelu_backward(_c(dy), _c(x), approximate)

    def _relu_forward(self, x):
        return N.relu_forward(_c(x))

    def _relu_backward(self, dy, x):
        return N.relu_backward(_c(dy), _c(x))

    def _silu_forward(self, x):
        return N.silu_forward(_c(x))

    def _silu_backward(self, dy, x):
        return N.silu_backward(_c(dy), _c(x))

    def _swiglu_forward(self, gate, up):
        return N.swiglu_forward(_c(gate), _c(up))

    def _swiglu_backward(self, dh, gate, up):
        return N.swiglu_backward(_c(dh), _c(gate), _c(up))

    def _attention_forward(self, q, k, v, causal, scale, mask):
        return N.attention_forward(_c(q), _c(k), _c(v), causal, scale, _c(mask))

    def _attention_forward_cached(self, q, k, v, causal, scale, mask, kv_len):
        # the kernel reads rows [0, kv_len) of each head straight from the cache buffers
        return N.attention_forward(_c(q), _c(k), _c(v), causal, scale, _c(mask), kv_len)

    def _attention_backward(self, do, q, k, v, o, lse, causal, scale, mask):
        lse = _c(lse.astype(np.float32, copy=False))
        return N.attention_backward(
            _c(do), _c(q), _c(k), _c(v), _c(o), lse, causal, scale, _c(mask)
        )

    def _cross_entropy_forward(self, logits, targets, ignore_index, label_smoothing):
        return N.cross_entropy_forward(_c(logits), _c(targets), ignore_index, label_smoothing)

    def _cross_entropy_backward(self, logits, targets, lse, ignore_index, label_smoothing, grad):
        lse = _c(lse.astype(np.float32, copy=False))
        return N.cross_entropy_backward(
            _c(logits), _c(targets), lse, ignore_index, label_smoothing, grad
        )

    def _embedding_forward(self, weight, ids):
        return N.embedding_forward(_c(weight), _c(ids))

    def _embedding_backward(self, dy, ids, num_embeddings):
        return N.embedding_backward(_c(dy), _c(ids), num_embeddings)

    def _rope_forward(self, x, cos, sin):
        return N.rope_forward(_c(x), _c(cos), _c(sin))

    def _rope_backward(self, dy, cos, sin):
        return N.rope_backward(_c(dy), _c(cos), _c(sin))

    def _adamw_step(self, param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
        N.adamw_step(param, _c(grad), m, v, lr, beta1, beta2, eps, weight_decay, step)
