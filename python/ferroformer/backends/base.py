"""The op contract (DESIGN.md), checked once for every backend.

``Backend`` defines each public op: it checks every argument with the
helpers of ``_checks`` (array types and dtypes, shapes, scalars, id ranges,
and that the result fits in memory) and then calls the backend's ``_op``
method, which may assume well-formed input: arrays of the backend's array
type and one float dtype, shapes that fit, Python floats, ints and bools. A
backend subclass sets ``name``, ``xp`` (its array module), ``float_dtypes``
and implements the ``_``-prefixed methods; the checks being here, the three
backends refuse the same inputs with the same messages.

The checks are on the path of every call (a decoding step makes hundreds),
so each compares shapes directly and builds a message only on failure.
"""

from __future__ import annotations

import math
from typing import Tuple

from . import _checks as C


class BackendUnavailable(RuntimeError):
    """The named backend cannot run here; the message says why. (Defined here, beside
    Backend, so that a backend's loader raises it without importing the package.)"""


class Backend:
    name: str = "abstract"
    xp = None  # the array module: numpy or cupy
    float_dtypes: tuple = ()

    def __repr__(self) -> str:
        return f"<ferroformer backend {self.name!r}>"

    # -- helpers ---------------------------------------------------------
    def _float(self, op: str, **arrays):
        """Every value an array of one of the backend's float dtypes; returns it."""
        return C.floats(op, arrays, self.xp.ndarray, self.float_dtypes, self.name)

    def _ints(self, op: str, name: str, x):
        C.require_array(op, name, x, self.xp.ndarray)
        C.require_int(op, name, x)
        return x

    def _int64(self, x):
        return x.astype(self.xp.int64, copy=False)

    def _memory_limit(self) -> int:
        """Bytes of memory the results of one call may take (host memory here)."""
        return C.host_memory_limit()

    def _room(self, op: str, out_bytes: int, *arrays) -> None:
        """Refuses (ValueError) a call whose results and input copies do not fit in memory."""
        n = out_bytes
        for x in arrays:
            n += x.nbytes
        if n > C.ROOM_FAST:
            C.room(op, out_bytes, arrays, self._memory_limit())

    def _ready(self, x, dtype, width: int, out_width: int = 0) -> bool:
        """Whether ``x`` may go straight to an ``_op`` from a module whose other
        arguments were fixed at construction (weights of known shapes, its own
        intermediate results): ``x`` is this backend's array, of ``dtype`` (one of
        its float dtypes), with last axis ``width``, and a result of ``out_width``
        values per row of it stays far below any memory limit. A module calls the
        public op where this is False, and so checks every input once: the public
        op raises the contract's error, or takes the case the fast path leaves out
        (a mixed-precision mix of dtypes)."""
        return (
            isinstance(x, self.xp.ndarray)
            and x.dtype == dtype
            and dtype in self.float_dtypes
            and x.shape[-1:] == (width,)
            and width > 0
            and x.size // width * (width + out_width) * dtype.itemsize < C.ROOM_FAST
        )

    def _mask(self, op, key_padding_mask):
        if key_padding_mask is None:
            return None
        C.require_array(op, "key_padding_mask", key_padding_mask, self.xp.ndarray)
        if key_padding_mask.dtype != self.xp.bool_:
            raise TypeError(f"{op}: key_padding_mask must be bool, got {key_padding_mask.dtype}")
        return key_padding_mask

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
        op = "matmul"
        dtype = self._float(op, a=a, b=b)
        trans_a, trans_b = C.flag(op, "trans_a", trans_a), C.flag(op, "trans_b", trans_b)
        shape = C.matmul_shape(a.shape, b.shape, trans_a, trans_b)
        self._room(op, math.prod(shape) * dtype.itemsize, a, b)
        return self._matmul(a, b, trans_a, trans_b)

    def linear_forward(self, x, w, b=None):
        """``x @ w.T + b``; x (..., in), w (out, in), b (out,) → (..., out)."""
        op = "linear_forward"
        if b is None:
            dtype = self._float(op, x=x, w=w)
        else:
            dtype = self._float(op, x=x, w=w, b=b)
        xs, ws = x.shape, w.shape
        if len(ws) != 2 or not xs or xs[-1] != ws[1] or (b is not None and b.shape != ws[:1]):
            C.linear_shapes(xs, ws, None if b is None else b.shape)
        self._room(op, math.prod(xs[:-1]) * ws[0] * dtype.itemsize, x, w)
        return self._linear_forward(x, w, b)

    def quantized_linear_forward(self, x, qweight, qtype, bias=None, *, activations: str = "float"):
        """``x @ W.T + bias`` with W held as GGUF blocks: x (..., in) float, qweight
        (out, row_bytes) uint8 (host memory, or this backend's arrays), each row
        in / block_size blocks of ``qtype`` (a name such as "Q4_K", or a GGML type
        number), bias (out,) of x's dtype -> (..., out) of x's dtype.

        ``activations="float"``: the product with the decoded weights (the exact
        reference, up to summation order). ``"int8"``: x is first rounded to int8 per
        32 values (``quant.reference.int8_activations``; what llama.cpp does), which
        lets the rust backend use integer dot products, about 3x faster for decoding;
        the result moves from the float one by at most ``sum over chunks of
        max|x_chunk| / 254 * sum |w_chunk|``. F32, F16 and BF16 weights are always
        multiplied in floats."""
        op = "quantized_linear_forward"
        if activations not in ("float", "int8"):
            raise ValueError(
                f'{op}: activations must be "float" or "int8", got {activations!r:.40}'
            )
        if bias is None:
            dtype = self._float(op, x=x)
        else:
            dtype = self._float(op, x=x, bias=bias)
        fmt = C.quantized_format(op, qtype)
        C.quantized_weight(op, qweight, self.xp.ndarray)
        xs, ws = x.shape, qweight.shape
        in_f = ws[1] // fmt.type_size * fmt.block_size if len(ws) == 2 else -1
        if (
            len(ws) != 2
            or ws[1] % fmt.type_size
            or not xs
            or xs[-1] != in_f
            or (bias is not None and bias.shape != ws[:1])
        ):
            C.quantized_shapes(op, fmt, xs, ws, None if bias is None else bias.shape)
        rows = math.prod(xs[:-1])
        self._room(op, rows * ws[0] * dtype.itemsize, x)
        x2 = x.reshape(rows, in_f)
        if not x2.flags.c_contiguous:
            x2 = self.xp.ascontiguousarray(x2)
        int8 = activations == "int8" and fmt.block_size > 1
        y = self._quantized_linear_forward(x2, qweight, fmt.name, bias, int8)
        return y.reshape((*xs[:-1], ws[0]))

    def _quantized_linear_forward(self, x, qweight, qtype, bias, int8):
        """x (rows, in) C-contiguous; default: the NumPy reference (dequantize, multiply),
        of x rounded as the int8 mode rounds it where ``int8``."""
        from ..quant.reference import int8_activations, quantized_linear_forward

        return quantized_linear_forward(int8_activations(x) if int8 else x, qweight, qtype, bias)

    def linear_backward(self, dy, x, w, *, has_bias: bool = True):
        """dy (..., out), x (..., in), w (out, in) → (dx, dw, db or None)."""
        op = "linear_backward"
        dtype = self._float(op, dy=dy, x=x, w=w)
        has_bias = C.flag(op, "has_bias", has_bias)
        C.linear_backward_shapes(dy.shape, x.shape, w.shape)
        self._room(op, (x.size + w.size + w.shape[0]) * dtype.itemsize, dy, x, w)
        return self._linear_backward(dy, x, w, has_bias)

    # -- softmax -----------------------------------------------------------
    def softmax_forward(self, x, *, scale: float = 1.0, causal: bool = False):
        """Softmax of ``scale * x`` over the last axis; causal masks j > i + Tk - Tq."""
        op = "softmax_forward"
        dtype = self._float(op, x=x)
        scale, causal = C.real(op, "scale", scale), C.flag(op, "causal", causal)
        if x.ndim < 1:
            raise C.shape_error(op, "x needs at least 1 dimension", x=x.shape)
        if causal:
            C.causal_shape(op, x.shape)
        self._room(op, x.size * dtype.itemsize, x)
        return self._softmax_forward(x, scale, causal)

    def softmax_backward(self, dy, y, *, scale: float = 1.0):
        op = "softmax_backward"
        dtype = self._float(op, dy=dy, y=y)
        scale = C.real(op, "scale", scale)
        if dy.shape != y.shape:
            C.require_same_shape(op, dy=dy, y=y)
        if y.ndim < 1:
            raise C.shape_error(op, "y needs at least 1 dimension", y=y.shape)
        self._room(op, y.size * dtype.itemsize, dy, y)
        return self._softmax_backward(dy, y, scale)

    # -- normalisation -------------------------------------------------------
    def layernorm_forward(self, x, gamma, beta, *, eps: float = 1e-5):
        """x (..., C), gamma and beta (C,) → (y, mean, rstd); mean, rstd x.shape[:-1]."""
        op = "layernorm_forward"
        dtype = self._float(op, x=x, gamma=gamma, beta=beta)
        eps = C.real(op, "eps", eps, low=0.0)
        c = x.shape[-1:]
        if not c or not c[0] or gamma.shape != c or beta.shape != c:
            C.norm_shapes(op, x.shape, gamma=gamma.shape, beta=beta.shape)
        self._room(op, (x.size + 2 * math.prod(x.shape[:-1])) * dtype.itemsize, x)
        return self._layernorm_forward(x, gamma, beta, eps)

    def layernorm_backward(self, dy, x, gamma, mean, rstd):
        op = "layernorm_backward"
        dtype = self._float(op, dy=dy, x=x, gamma=gamma, mean=mean, rstd=rstd)
        if dy.shape != x.shape:
            C.require_same_shape(op, dy=dy, x=x)
        c = x.shape[-1:]
        if not c or not c[0] or gamma.shape != c:
            C.norm_shapes(op, x.shape, gamma=gamma.shape)
        rows = x.shape[:-1]
        if mean.shape != rows or rstd.shape != rows:
            C.stats_shape(op, x.shape, mean=mean.shape, rstd=rstd.shape)
        self._room(op, (x.size + 2 * c[0]) * dtype.itemsize, dy, x)
        return self._layernorm_backward(dy, x, gamma, mean, rstd)

    def rmsnorm_forward(self, x, gamma, *, eps: float = 1e-6):
        """x (..., C), gamma (C,) → (y, rstd); rstd x.shape[:-1]."""
        op = "rmsnorm_forward"
        dtype = self._float(op, x=x, gamma=gamma)
        eps = C.real(op, "eps", eps, low=0.0)
        c = x.shape[-1:]
        if not c or not c[0] or gamma.shape != c:
            C.norm_shapes(op, x.shape, gamma=gamma.shape)
        self._room(op, (x.size + math.prod(x.shape[:-1])) * dtype.itemsize, x)
        return self._rmsnorm_forward(x, gamma, eps)

    def rmsnorm_backward(self, dy, x, gamma, rstd):
        op = "rmsnorm_backward"
        dtype = self._float(op, dy=dy, x=x, gamma=gamma, rstd=rstd)
        if dy.shape != x.shape:
            C.require_same_shape(op, dy=dy, x=x)
        c = x.shape[-1:]
        if not c or not c[0] or gamma.shape != c:
            C.norm_shapes(op, x.shape, gamma=gamma.shape)
        if rstd.shape != x.shape[:-1]:
            C.stats_shape(op, x.shape, rstd=rstd.shape)
        self._room(op, (x.size + c[0]) * dtype.itemsize, dy, x)
        return self._rmsnorm_backward(dy, x, gamma, rstd)

    # -- activations -----------------------------------------------------------
    def _unary(self, op, x):
        dtype = self._float(op, x=x)
        self._room(op, x.size * dtype.itemsize, x)

    def _binary(self, op, dy, x, dy_name="dy", x_name="x"):
        dtype = self._float(op, **{dy_name: dy, x_name: x})
        if dy.shape != x.shape:
            C.require_same_shape(op, **{dy_name: dy, x_name: x})
        self._room(op, x.size * dtype.itemsize, dy, x)

    def gelu_forward(self, x, *, approximate: str = "tanh"):
        self._unary("gelu_forward", x)
        C.gelu_approximate("gelu_forward", approximate)
        return self._gelu_forward(x, approximate)

    def gelu_backward(self, dy, x, *, approximate: str = "tanh"):
        self._binary("gelu_backward", dy, x)
        C.gelu_approximate("gelu_backward", approximate)
        return self._gelu_backward(dy, x, approximate)

    def relu_forward(self, x):
        self._unary("relu_forward", x)
        return self._relu_forward(x)

    def relu_backward(self, dy, x):
        self._binary("relu_backward", dy, x)
        return self._relu_backward(dy, x)

    def silu_forward(self, x):
        self._unary("silu_forward", x)
        return self._silu_forward(x)

    def silu_backward(self, dy, x):
        self._binary("silu_backward", dy, x)
        return self._silu_backward(dy, x)

    def swiglu_forward(self, gate, up):
        """``silu(gate) * up``."""
        self._binary("swiglu_forward", gate, up, "gate", "up")
        return self._swiglu_forward(gate, up)

    def swiglu_backward(self, dh, gate, up):
        op = "swiglu_backward"
        dtype = self._float(op, dh=dh, gate=gate, up=up)
        if not dh.shape == gate.shape == up.shape:
            C.require_same_shape(op, dh=dh, gate=gate, up=up)
        self._room(op, 2 * gate.size * dtype.itemsize, dh, gate, up)
        return self._swiglu_backward(dh, gate, up)

    # -- attention ---------------------------------------------------------------
    def _attention_args(self, op, q, k, v, causal, scale, key_padding_mask):
        """(causal, scale, mask) once q, k, v, the mask and the flags are checked."""
        mask = self._mask(op, key_padding_mask)
        causal = C.flag(op, "causal", causal)
        C.attention_shapes(op, q.shape, k.shape, v.shape, None if mask is None else mask.shape)
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else C.real(op, "scale", scale)
        return causal, scale, mask

    def attention_forward(
        self, q, k, v, *, causal: bool = False, scale=None, key_padding_mask=None, kv_len=None
    ):
        """q (B, Hq, Tq, D), k, v (B, Hkv, Tk, D) → (o (B, Hq, Tq, D), lse (B, Hq, Tq)).

        ``kv_len``: k, v (and the mask, (B, Tk)) are KV-cache buffers of which only
        positions ``[0, kv_len)`` take part; the causal mask then aligns the queries
        with the last Tq of those positions. A backend reads the used part in place."""
        op = "attention_forward"
        dtype = self._float(op, q=q, k=k, v=v)
        causal, scale, mask = self._attention_args(op, q, k, v, causal, scale, key_padding_mask)
        self._room(op, (q.size + q.size // q.shape[3]) * dtype.itemsize, q, k, v)
        if kv_len is None:
            return self._attention_forward(q, k, v, causal, scale, mask)
        kv_len = C.integer(op, "kv_len", kv_len)
        if not 0 <= kv_len <= k.shape[2]:
            raise ValueError(
                f"{op}: kv_len must be in [0, {k.shape[2]}] for k {tuple(k.shape)}, got {kv_len}"
            )
        return self._attention_forward_cached(q, k, v, causal, scale, mask, kv_len)

    def _attention_forward_cached(self, q, k, v, causal, scale, mask, kv_len):
        """Default: attention over the used slices (a backend may read them in place)."""
        mask = None if mask is None else mask[:, :kv_len]
        return self._attention_forward(q, k[:, :, :kv_len], v[:, :, :kv_len], causal, scale, mask)

    def attention_backward(
        self, do, q, k, v, o, lse, *, causal: bool = False, scale=None, key_padding_mask=None
    ):
        op = "attention_backward"
        dtype = self._float(op, do=do, q=q, k=k, v=v, o=o)
        C.require_stat(op, "lse", lse, self.xp.ndarray, self.float_dtypes)
        causal, scale, mask = self._attention_args(op, q, k, v, causal, scale, key_padding_mask)
        if not do.shape == o.shape == q.shape:
            C.require_same_shape(op, do=do, o=o, q=q)
        if lse.shape != q.shape[:3]:
            raise C.shape_error(op, "lse must be (B, Hq, Tq)", q=q.shape, lse=lse.shape)
        self._room(op, (q.size + 2 * k.size) * dtype.itemsize, do, q, k, v, o)
        return self._attention_backward(do, q, k, v, o, lse, causal, scale, mask)

    # -- loss --------------------------------------------------------------------
    def _cross_entropy_args(self, op, logits, targets, ignore_index, label_smoothing):
        self._float(op, logits=logits)
        self._ints(op, "targets", targets)
        ignore_index = C.integer(op, "ignore_index", ignore_index)
        label_smoothing = C.real(op, "label_smoothing", label_smoothing, low=0.0, high=1.0)
        C.cross_entropy_shapes(op, logits.shape, targets.shape)
        return ignore_index, label_smoothing

    def cross_entropy_forward(
        self, logits, targets, *, ignore_index: int = -100, label_smoothing: float = 0.0
    ) -> Tuple[float, object]:
        """logits (N, V), targets (N,) → (mean loss over counted rows, lse (N,))."""
        op = "cross_entropy_forward"
        ignore_index, label_smoothing = self._cross_entropy_args(
            op, logits, targets, ignore_index, label_smoothing
        )
        self._room(op, 8 * logits.shape[0], logits, targets)
        C.check_targets(op, targets, logits.shape[1], ignore_index, self.xp)
        return self._cross_entropy_forward(
            logits, self._int64(targets), ignore_index, label_smoothing
        )

    def cross_entropy_backward(
        self,
        logits,
        targets,
        lse,
        *,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        grad: float = 1.0,
    ):
        op = "cross_entropy_backward"
        ignore_index, label_smoothing = self._cross_entropy_args(
            op, logits, targets, ignore_index, label_smoothing
        )
        C.require_stat(op, "lse", lse, self.xp.ndarray, self.float_dtypes)
        grad = C.real(op, "grad", grad)
        if lse.shape != logits.shape[:1]:
            raise C.shape_error(op, "lse must be (N,)", logits=logits.shape, lse=lse.shape)
        self._room(op, logits.size * logits.dtype.itemsize, logits, targets, lse)
        C.check_targets(op, targets, logits.shape[1], ignore_index, self.xp)
        return self._cross_entropy_backward(
            logits, self._int64(targets), lse, ignore_index, label_smoothing, grad
        )

    # -- embedding ---------------------------------------------------------------
    def embedding_forward(self, weight, ids):
        """weight (V, C), ids (...) int → (..., C)."""
        op = "embedding_forward"
        dtype = self._float(op, weight=weight)
        self._ints(op, "ids", ids)
        if weight.ndim != 2:
            raise C.shape_error(op, "weight must be (V, C)", weight=weight.shape)
        self._room(op, ids.size * weight.shape[1] * dtype.itemsize, weight, ids)
        C.check_ids(op, ids, weight.shape[0], self.xp)
        return self._embedding_forward(weight, self._int64(ids))

    def embedding_backward(self, dy, ids, num_embeddings: int):
        """dy (..., C), ids (...) → dweight (num_embeddings, C), summed in a fixed order."""
        op = "embedding_backward"
        dtype = self._float(op, dy=dy)
        self._ints(op, "ids", ids)
        num_embeddings = C.integer(op, "num_embeddings", num_embeddings, low=0)
        if dy.ndim < 1 or dy.shape[:-1] != ids.shape:
            raise C.shape_error(op, "dy must be ids.shape + (C,)", dy=dy.shape, ids=ids.shape)
        self._room(op, num_embeddings * dy.shape[-1] * dtype.itemsize, dy, ids)
        C.check_ids(op, ids, num_embeddings, self.xp)
        return self._embedding_backward(dy, self._int64(ids), num_embeddings)

    # -- rotary positions ----------------------------------------------------------
    def rope_forward(self, x, cos, sin):
        """x (..., T, D), cos and sin (T, D/2): rotates adjacent pairs (x[2i], x[2i+1])."""
        op = "rope_forward"
        dtype = self._float(op, x=x, cos=cos, sin=sin)
        C.rope_shapes(op, x.shape, cos.shape, sin.shape)
        self._room(op, x.size * dtype.itemsize, x, cos, sin)
        return self._rope_forward(x, cos, sin)

    def rope_backward(self, dy, cos, sin):
        op = "rope_backward"
        dtype = self._float(op, dy=dy, cos=cos, sin=sin)
        C.rope_shapes(op, dy.shape, cos.shape, sin.shape, "dy")
        self._room(op, dy.size * dtype.itemsize, dy, cos, sin)
        return self._rope_backward(dy, cos, sin)

    # -- optimiser -------------------------------------------------------------------
    def adamw_step(
        self,
        param,
        grad,
        m,
        v,
        *,
        lr: float,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        step: int,
    ) -> None:
        """Updates param, m and v in place (decoupled weight decay, bias correction)."""
        op = "adamw_step"
        self._float(op, param=param, grad=grad, m=m, v=v)
        if m.dtype != param.dtype or v.dtype != param.dtype:  # (mixed precision takes either)
            raise TypeError(
                f"{op}: m ({m.dtype}) and v ({v.dtype}) must have param's dtype ({param.dtype})"
            )
        step = C.integer(op, "step", step)
        lr = C.real(op, "lr", lr, low=0.0)
        beta1 = C.real(op, "beta1", beta1, low=0.0, high=1.0, high_open=True)
        beta2 = C.real(op, "beta2", beta2, low=0.0, high=1.0, high_open=True)
        eps = C.real(op, "eps", eps, low=0.0)
        weight_decay = C.real(op, "weight_decay", weight_decay, low=0.0)
        C.adamw_shapes(param.shape, grad.shape, m.shape, v.shape, step)
        for name, x in (("param", param), ("m", m), ("v", v)):
            C.writable_in_place(op, name, x)
        C.distinct(op, self.xp, param=param, grad=grad, m=m, v=v)
        self._room(op, 0, grad)
        self._adamw_step(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step)
