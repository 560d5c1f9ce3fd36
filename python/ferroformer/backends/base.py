"""The op contract (DESIGN.md), checked once for every backend.

``Backend`` defines each public op: it checks dtypes and shapes with the
helpers of ``_checks`` and then calls the backend's ``_op`` method, which may
assume well-formed input. A backend subclass sets ``name``, ``xp`` (its array
module), ``float_dtypes`` and implements the ``_``-prefixed methods.
"""

from __future__ import annotations

import math
from typing import Tuple

from . import _checks as C


class Backend:
    name: str = "abstract"
    xp = None  # the array module: numpy or cupy
    float_dtypes: tuple = ()

    def __repr__(self) -> str:
        return f"<ferroformer backend {self.name!r}>"

    # -- helpers ---------------------------------------------------------
    def _float(self, op: str, **arrays):
        for name, x in arrays.items():
            if x is not None:
                C.require_array(op, name, x, self.xp.ndarray)
        return C.require_float(op, arrays, self.float_dtypes, self.name)

    def _ints(self, op: str, name: str, x):
        C.require_array(op, name, x, self.xp.ndarray)
        C.require_int(op, name, x)
        return x.astype(self.xp.int64, copy=False)

    def asarray(self, x, dtype=None):
        """Moves array-likes onto this backend (a copy only where needed)."""
        if self.xp.__name__ == "cupy":
            return self.xp.asarray(x, dtype=dtype)
        if type(x).__module__.startswith("cupy"):
            x = x.get()
        return self.xp.asarray(x, dtype=dtype)

    # -- matrix products ---------------------------------------------------
    def matmul(self, a, b, *, trans_a: bool = False, trans_b: bool = False):
        """``op(a) @ op(b)``; a (..., m, k), b (..., k, n); op transposes the last two axes."""
        self._float("matmul", a=a, b=b)
        C.matmul_shape(a.shape, b.shape, trans_a, trans_b)
        return self._matmul(a, b, trans_a, trans_b)

    def linear_forward(self, x, w, b=None):
        """``x @ w.T + b``; x (..., in), w (out, in), b (out,) → (..., out)."""
        self._float("linear_forward", x=x, w=w, b=b)
        C.linear_shapes(x.shape, w.shape, None if b is None else b.shape)
        return self._linear_forward(x, w, b)

    def linear_backward(self, dy, x, w, *, has_bias: bool = True):
        """dy (..., out), x (..., in), w (out, in) → (dx, dw, db or None)."""
        self._float("linear_backward", dy=dy, x=x, w=w)
        C.linear_backward_shapes(dy.shape, x.shape, w.shape)
        return self._linear_backward(dy, x, w, has_bias)

    # -- softmax -----------------------------------------------------------
    def softmax_forward(self, x, *, scale: float = 1.0, causal: bool = False):
        """Softmax of ``scale * x`` over the last axis; causal masks j > i + Tk - Tq."""
        self._float("softmax_forward", x=x)
        if x.ndim < 1:
            raise C.shape_error("softmax_forward", "x needs at least 1 dimension", x=x.shape)
        if causal:
            C.causal_shape("softmax_forward", x.shape)
        return self._softmax_forward(x, float(scale), bool(causal))

    def softmax_backward(self, dy, y, *, scale: float = 1.0):
        self._float("softmax_backward", dy=dy, y=y)
        C.require_same_shape("softmax_backward", dy=dy, y=y)
        return self._softmax_backward(dy, y, float(scale))

    # -- normalisation -------------------------------------------------------
    def layernorm_forward(self, x, gamma, beta, *, eps: float = 1e-5):
        """x (..., C), gamma and beta (C,) → (y, mean, rstd); mean, rstd x.shape[:-1]."""
        self._float("layernorm_forward", x=x, gamma=gamma, beta=beta)
        C.norm_shapes("layernorm_forward", x.shape, gamma=gamma.shape, beta=beta.shape)
        return self._layernorm_forward(x, gamma, beta, float(eps))

    def layernorm_backward(self, dy, x, gamma, mean, rstd):
        op = "layernorm_backward"
        self._float(op, dy=dy, x=x, gamma=gamma, mean=mean, rstd=rstd)
        C.require_same_shape(op, dy=dy, x=x)
        C.norm_shapes(op, x.shape, gamma=gamma.shape)
        C.stats_shape(op, x.shape, mean=mean.shape, rstd=rstd.shape)
        return self._layernorm_backward(dy, x, gamma, mean, rstd)

    def rmsnorm_forward(self, x, gamma, *, eps: float = 1e-6):
        """x (..., C), gamma (C,) → (y, rstd); rstd x.shape[:-1]."""
        self._float("rmsnorm_forward", x=x, gamma=gamma)
        C.norm_shapes("rmsnorm_forward", x.shape, gamma=gamma.shape)
        return self._rmsnorm_forward(x, gamma, float(eps))

    def rmsnorm_backward(self, dy, x, gamma, rstd):
        op = "rmsnorm_backward"
        self._float(op, dy=dy, x=x, gamma=gamma, rstd=rstd)
        C.require_same_shape(op, dy=dy, x=x)
        C.norm_shapes(op, x.shape, gamma=gamma.shape)
        C.stats_shape(op, x.shape, rstd=rstd.shape)
        return self._rmsnorm_backward(dy, x, gamma, rstd)

    # -- activations -----------------------------------------------------------
    def gelu_forward(self, x, *, approximate: str = "tanh"):
        self._float("gelu_forward", x=x)
        C.gelu_approximate("gelu_forward", approximate)
        return self._gelu_forward(x, approximate)

    def gelu_backward(self, dy, x, *, approximate: str = "tanh"):
        self._float("gelu_backward", dy=dy, x=x)
        C.require_same_shape("gelu_backward", dy=dy, x=x)
        C.gelu_approximate("gelu_backward", approximate)
        return self._gelu_backward(dy, x, approximate)

    def relu_forward(self, x):
        self._float("relu_forward", x=x)
        return self._relu_forward(x)

    def relu_backward(self, dy, x):
        self._float("relu_backward", dy=dy, x=x)
        C.require_same_shape("relu_backward", dy=dy, x=x)
        return self._relu_backward(dy, x)

    def silu_forward(self, x):
        self._float("silu_forward", x=x)
        return self._silu_forward(x)

    def silu_backward(self, dy, x):
        self._float("silu_backward", dy=dy, x=x)
        C.require_same_shape("silu_backward", dy=dy, x=x)
        return self._silu_backward(dy, x)

    def swiglu_forward(self, gate, up):
        """``silu(gate) * up``."""
        self._float("swiglu_forward", gate=gate, up=up)
        C.require_same_shape("swiglu_forward", gate=gate, up=up)
        return self._swiglu_forward(gate, up)

    def swiglu_backward(self, dh, gate, up):
        self._float("swiglu_backward", dh=dh, gate=gate, up=up)
        C.require_same_shape("swiglu_backward", dh=dh, gate=gate, up=up)
        return self._swiglu_backward(dh, gate, up)

    # -- attention ---------------------------------------------------------------
    def _mask(self, op, key_padding_mask):
        if key_padding_mask is None:
            return None
        C.require_array(op, "key_padding_mask", key_padding_mask, self.xp.ndarray)
        if key_padding_mask.dtype != self.xp.bool_:
            raise TypeError(f"{op}: key_padding_mask must be bool, got {key_padding_mask.dtype}")
        return key_padding_mask

    def attention_forward(self, q, k, v, *, causal: bool = False, scale=None, key_padding_mask=None,
                          kv_len=None):
        """q (B, Hq, Tq, D), k, v (B, Hkv, Tk, D) → (o (B, Hq, Tq, D), lse (B, Hq, Tq)).

        ``kv_len``: k, v (and the mask, (B, Tk)) are KV-cache buffers of which only
        positions ``[0, kv_len)`` take part; the causal mask then aligns the queries
        with the last Tq of those positions. A backend reads the used part in place."""
        op = "attention_forward"
        self._float(op, q=q, k=k, v=v)
        mask = self._mask(op, key_padding_mask)
        C.attention_shapes(op, q.shape, k.shape, v.shape, None if mask is None else mask.shape)
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
        if kv_len is None:
            return self._attention_forward(q, k, v, bool(causal), scale, mask)
        kv_len = int(kv_len)
        if not 0 < kv_len <= k.shape[2]:
            raise ValueError(f"{op}: kv_len must be in [1, {k.shape[2]}] for k {tuple(k.shape)}, "
                             f"got {kv_len}")
        return self._attention_forward_cached(q, k, v, bool(causal), scale, mask, kv_len)

    def _attention_forward_cached(self, q, k, v, causal, scale, mask, kv_len):
        """Default: attention over the used slices (a backend may read them in place)."""
        mask = None if mask is None else mask[:, :kv_len]
        return self._attention_forward(q, k[:, :, :kv_len], v[:, :, :kv_len], causal, scale, mask)

    def attention_backward(self, do, q, k, v, o, lse, *, causal: bool = False, scale=None,
                           key_padding_mask=None):
        op = "attention_backward"
        self._float(op, do=do, q=q, k=k, v=v, o=o)
        C.require_array(op, "lse", lse, self.xp.ndarray)
        mask = self._mask(op, key_padding_mask)
        C.attention_shapes(op, q.shape, k.shape, v.shape, None if mask is None else mask.shape)
        C.require_same_shape(op, do=do, o=o, q=q)
        if tuple(lse.shape) != tuple(q.shape[:3]):
            raise C.shape_error(op, "lse must be (B, Hq, Tq)", q=q.shape, lse=lse.shape)
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
        return self._attention_backward(do, q, k, v, o, lse, bool(causal), scale, mask)

    # -- loss --------------------------------------------------------------------
    def cross_entropy_forward(self, logits, targets, *, ignore_index: int = -100,
                              label_smoothing: float = 0.0) -> Tuple[float, object]:
        """logits (N, V), targets (N,) → (mean loss over counted rows, lse (N,))."""
        op = "cross_entropy_forward"
        self._float(op, logits=logits)
        targets = self._ints(op, "targets", targets)
        C.cross_entropy_shapes(op, logits.shape, targets.shape)
        C.check_targets(op, targets, logits.shape[1], ignore_index, self.xp)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"{op}: label_smoothing must be in [0, 1], got {label_smoothing}")
        return self._cross_entropy_forward(logits, targets, int(ignore_index), float(label_smoothing))

    def cross_entropy_backward(self, logits, targets, lse, *, ignore_index: int = -100,
                               label_smoothing: float = 0.0, grad: float = 1.0):
        op = "cross_entropy_backward"
        self._float(op, logits=logits)
        targets = self._ints(op, "targets", targets)
        C.cross_entropy_shapes(op, logits.shape, targets.shape)
        C.check_targets(op, targets, logits.shape[1], ignore_index, self.xp)
        if tuple(lse.shape) != (logits.shape[0],):
            raise C.shape_error(op, "lse must be (N,)", logits=logits.shape, lse=lse.shape)
        return self._cross_entropy_backward(logits, targets, lse, int(ignore_index),
                                            float(label_smoothing), float(grad))

    # -- embedding ---------------------------------------------------------------
    def embedding_forward(self, weight, ids):
        """weight (V, C), ids (...) int → (..., C)."""
        op = "embedding_forward"
        self._float(op, weight=weight)
        ids = self._ints(op, "ids", ids)
        if weight.ndim != 2:
            raise C.shape_error(op, "weight must be (V, C)", weight=weight.shape)
        C.check_ids(op, ids, weight.shape[0], self.xp)
        return self._embedding_forward(weight, ids)

    def embedding_backward(self, dy, ids, num_embeddings: int):
        """dy (..., C), ids (...) → dweight (num_embeddings, C), summed in a fixed order."""
        op = "embedding_backward"
        self._float(op, dy=dy)
        ids = self._ints(op, "ids", ids)
        if dy.ndim < 1 or tuple(dy.shape[:-1]) != tuple(ids.shape):
            raise C.shape_error(op, "dy must be ids.shape + (C,)", dy=dy.shape, ids=ids.shape)
        C.check_ids(op, ids, num_embeddings, self.xp)
        return self._embedding_backward(dy, ids, int(num_embeddings))

    # -- rotary positions ----------------------------------------------------------
    def rope_forward(self, x, cos, sin):
        """x (..., T, D), cos and sin (T, D/2): rotates adjacent pairs (x[2i], x[2i+1])."""
        self._float("rope_forward", x=x, cos=cos, sin=sin)
        C.rope_shapes("rope_forward", x.shape, cos.shape, sin.shape)
        return self._rope_forward(x, cos, sin)

    def rope_backward(self, dy, cos, sin):
        self._float("rope_backward", dy=dy, cos=cos, sin=sin)
        C.rope_shapes("rope_backward", dy.shape, cos.shape, sin.shape)
        return self._rope_backward(dy, cos, sin)

    # -- optimiser -------------------------------------------------------------------
    def adamw_step(self, param, grad, m, v, *, lr: float, beta1: float = 0.9, beta2: float = 0.999,
                   eps: float = 1e-8, weight_decay: float = 0.0, step: int) -> None:
        """Updates param, m and v in place (decoupled weight decay, bias correction)."""
        self._float("adamw_step", param=param, grad=grad, m=m, v=v)
        C.adamw_shapes(param.shape, grad.shape, m.shape, v.shape, int(step))
        for name, x in (("param", param), ("m", m), ("v", v)):
            # CuPy arrays are always writeable and have no flags.writeable
            if not x.flags.c_contiguous or not getattr(x.flags, "writeable", True):
                raise ValueError(f"adamw_step: {name} must be C-contiguous and writeable to update in place")
        self._adamw_step(param, grad, m, v, float(lr), float(beta1), float(beta2), float(eps),
                         float(weight_decay), int(step))
