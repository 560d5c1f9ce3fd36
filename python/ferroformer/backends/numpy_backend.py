"""The NumPy reference backend: every op of the contract in plain,
readable NumPy, in float32 and float64. The fast backends are tested
against it; the finite-difference gradient checks run it in float64.
"""

from __future__ import annotations

import math

import numpy as np

from .base import Backend

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _erf(x):
    """erf for arrays, through math.erf (NumPy has none); exact to float64.
    Mapping over a list is about 1.5x faster than ``np.vectorize``."""
    x = np.asarray(x)
    out = np.fromiter(map(math.erf, x.ravel().tolist()), np.float64, count=x.size)
    return out.reshape(x.shape).astype(x.dtype, copy=False)


def causal_mask(tq: int, tk: int):
    """(Tq, Tk) bool, True where query i may not see key j (j > i + Tk - Tq)."""
    return np.arange(tk)[None, :] > np.arange(tq)[:, None] + (tk - tq)


def _softmax_rows(s, masked):
    """Softmax over the last axis of ``s`` with ``masked`` entries excluded;
    a row with every entry masked gives zeros. Returns (p, lse)."""
    s = np.where(masked, -np.inf, s)
    mx = s.max(axis=-1, keepdims=True, initial=-np.inf)  # an empty row (Tk = 0) is all masked
    safe = np.where(np.isfinite(mx), mx, 0.0)
    e = np.exp(s - safe)
    total = e.sum(axis=-1, keepdims=True)
    empty = total == 0
    p = np.where(masked, 0.0, e / np.where(empty, 1.0, total))  # 0 when masked, even in a NaN row
    lse = np.where(empty, -np.inf, np.log(np.where(empty, 1.0, total)) + safe)
    return p, lse[..., 0]


def _matmul_visible(a, b, hidden):
    """``a @ b`` over the terms ``a[..., i, j] * b[..., j, :]`` whose ``hidden[..., i, j]`` is
    False: a hidden (masked) term adds nothing, even where ``a`` or ``b`` is not finite there
    (``0 * inf`` would be NaN). Key columns holding a non-finite value are added one by one."""
    a = np.where(hidden, 0, a)
    bad = ~np.isfinite(a).all(axis=-2) | ~np.isfinite(b).all(axis=-1)
    if bad.size == 0:  # no keys (or no rows): nothing to add one by one
        return a @ b
    cols = np.nonzero(bad.reshape(-1, bad.shape[-1]).any(axis=0))[0]
    if cols.size == 0:
        return a @ b
    a_ok, b_ok = a.copy(), b.copy()
    a_ok[..., cols] = 0
    b_ok[..., cols, :] = 0
    out = a_ok @ b_ok
    for j in cols:
        out = out + np.where(hidden[..., j, None], 0, a[..., j, None] * b[..., j, None, :])
    return out


class NumpyBackend(Backend):
    name = "numpy"
    xp = np
    float_dtypes = (np.dtype(np.float32), np.dtype(np.float64))

    # -- matrix products ---------------------------------------------------
    def _matmul(self, a, b, trans_a, trans_b):
        a = np.swapaxes(a, -1, -2) if trans_a else a
        b = np.swapaxes(b, -1, -2) if trans_b else b
        if a.size == 0 or b.size == 0:
            # NumPy loops over the batch even when every matrix is empty: seconds for
            # 2^31 of them. An empty operand gives an empty result or one of zeros.
            shape = (*np.broadcast_shapes(a.shape[:-2], b.shape[:-2]), a.shape[-2], b.shape[-1])
            return np.zeros(shape, np.result_type(a, b))
        return np.ascontiguousarray(np.matmul(a, b))

    def _linear_forward(self, x, w, b):
        # one product over the rows (a batched x @ w.T loops over the leading dims,
        # for seconds where they hold billions of empty rows)
        y = x.reshape(math.prod(x.shape[:-1]), x.shape[-1]) @ w.T
        if b is not None:
            y += b
        return np.ascontiguousarray(y).reshape((*x.shape[:-1], w.shape[0]))

    def _linear_backward(self, dy, x, w, has_bias):
        rows = math.prod(x.shape[:-1])  # not -1: a reshape cannot infer it when in or out is 0
        dy2 = dy.reshape(rows, dy.shape[-1])
        x2 = x.reshape(rows, x.shape[-1])
        dx = (dy2 @ w).reshape(x.shape)
        dw = dy2.T @ x2
        db = dy2.sum(axis=0) if has_bias else None
        return dx, np.ascontiguousarray(dw), db

    # -- softmax -----------------------------------------------------------
    def _softmax_forward(self, x, scale, causal):
        if x.size == 0:  # nothing to compute (and no (Tq, Tk) mask to build)
            return np.empty(x.shape, x.dtype)
        masked = causal_mask(*x.shape[-2:]) if causal else np.zeros(x.shape[-1:], bool)
        p, _ = _softmax_rows(x * x.dtype.type(scale), masked)
        return p.astype(x.dtype, copy=False)

    def _softmax_backward(self, dy, y, scale):
        inner = (dy * y).sum(axis=-1, keepdims=True)
        return (y.dtype.type(scale) * y * (dy - inner)).astype(y.dtype, copy=False)

    # -- normalisation -------------------------------------------------------
    def _layernorm_forward(self, x, gamma, beta, eps):
        mean = x.mean(axis=-1)
        xc = x - mean[..., None]
        var = (xc * xc).mean(axis=-1)
        rstd = 1.0 / np.sqrt(var + x.dtype.type(eps))
        y = xc * rstd[..., None] * gamma + beta
        return y, mean, rstd

    def _layernorm_backward(self, dy, x, gamma, mean, rstd):
        c = x.shape[-1]
        xhat = (x - mean[..., None]) * rstd[..., None]
        g = dy * gamma
        dx = rstd[..., None] * (
            g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).sum(axis=-1, keepdims=True) / c
        )
        rows = (math.prod(x.shape[:-1]), c)
        dgamma = (dy * xhat).reshape(rows).sum(axis=0)
        dbeta = dy.reshape(rows).sum(axis=0)
        return dx, dgamma, dbeta

    def _rmsnorm_forward(self, x, gamma, eps):
        rstd = 1.0 / np.sqrt((x * x).mean(axis=-1) + x.dtype.type(eps))
        return x * rstd[..., None] * gamma, rstd

    def _rmsnorm_backward(self, dy, x, gamma, rstd):
        c = x.shape[-1]
        xhat = x * rstd[..., None]
        g = dy * gamma
        dx = rstd[..., None] * (g - xhat * (g * xhat).sum(axis=-1, keepdims=True) / c)
        dgamma = (dy * xhat).reshape(math.prod(x.shape[:-1]), c).sum(axis=0)
        return dx, dgamma

    # -- activations -----------------------------------------------------------
    @staticmethod
    def _gelu_sigmoid(x):
        """``sigmoid(2u) = 0.5 (1 + tanh(u))`` of tanh-GELU, ``u = sqrt(2/pi) (x +
        0.044715 x^3)``, without the cancellation of ``1 + tanh(u)`` for x far below 0
        (where it is 0 in float32 long before the true value underflows)."""
        t = x.dtype.type
        two_u = t(2 * _SQRT_2_OVER_PI) * (x + t(0.044715) * x * x * x)
        with np.errstate(over="ignore"):
            return t(1) / (t(1) + np.exp(-two_u))

    def _gelu_forward(self, x, approximate):
        t = x.dtype.type
        if approximate == "tanh":
            return x * self._gelu_sigmoid(x)
        return t(0.5) * x * (t(1) + _erf(x / t(math.sqrt(2.0))))

    def _gelu_backward(self, dy, x, approximate):
        t = x.dtype.type
        if approximate == "tanh":
            # d/dx [x s] = s + 2 x s (1 - s) u', s = sigmoid(2u)
            s = self._gelu_sigmoid(x)
            du = t(_SQRT_2_OVER_PI) * (t(1) + t(3 * 0.044715) * x * x)
            return dy * (s + t(2) * x * s * (t(1) - s) * du)
        cdf = t(0.5) * (t(1) + _erf(x / t(math.sqrt(2.0))))
        pdf = np.exp(t(-0.5) * x * x) / t(math.sqrt(2.0 * math.pi))
        return dy * (cdf + x * pdf)

    def _relu_forward(self, x):
        return np.maximum(x, x.dtype.type(0))

    def _relu_backward(self, dy, x):
        return np.where(x > 0, dy, dy.dtype.type(0))

    @staticmethod
    def _sigmoid(x):
        return 1.0 / (1.0 + np.exp(-x))

    def _silu_forward(self, x):
        return x * self._sigmoid(x)

    def _silu_backward(self, dy, x):
        s = self._sigmoid(x)
        return dy * s * (1 + x * (1 - s))

    def _swiglu_forward(self, gate, up):
        return self._silu_forward(gate) * up

    def _swiglu_backward(self, dh, gate, up):
        return self._silu_backward(dh * up, gate), dh * self._silu_forward(gate)

    # -- attention ---------------------------------------------------------------
    @staticmethod
    def _attention_masked(q, k, causal, key_padding_mask):
        tq, tk = q.shape[2], k.shape[2]
        masked = np.zeros((1, 1, tq, tk), bool)
        if causal:
            masked = masked | causal_mask(tq, tk)[None, None]
        if key_padding_mask is not None:
            masked = masked | key_padding_mask[:, None, None, :]
        return masked

    @staticmethod
    def _repeat_kv(x, groups):
        return x if groups == 1 else np.repeat(x, groups, axis=1)

    def _attention_forward(self, q, k, v, causal, scale, key_padding_mask):
        if q.size == 0 or k.shape[2] == 0:
            # nothing to attend to (or no queries): o = 0, lse = -inf, built directly;
            # NumPy's batched products loop for seconds over 2^31 empty heads
            b, h, t, _ = q.shape
            return np.zeros(q.shape, q.dtype), np.full((b, h, t), -np.inf, q.dtype)
        groups = q.shape[1] // k.shape[1]
        k, v = self._repeat_kv(k, groups), self._repeat_kv(v, groups)
        s = (q @ np.swapaxes(k, -1, -2)) * q.dtype.type(scale)
        masked = self._attention_masked(q, k, causal, key_padding_mask)
        p, lse = _softmax_rows(s, masked)
        o = _matmul_visible(p, v, masked).astype(q.dtype, copy=False)
        return np.ascontiguousarray(o), lse.astype(q.dtype, copy=False)

    def _attention_backward(self, do, q, k, v, o, lse, causal, scale, key_padding_mask):
        groups = q.shape[1] // k.shape[1]
        kr, vr = self._repeat_kv(k, groups), self._repeat_kv(v, groups)
        s = (q @ np.swapaxes(kr, -1, -2)) * q.dtype.type(scale)
        masked = self._attention_masked(q, kr, causal, key_padding_mask)
        finite = np.isfinite(lse)[..., None]
        p = np.where(masked | ~finite, 0.0, np.exp(s - np.where(finite, lse[..., None], 0.0)))
        p = p.astype(q.dtype, copy=False)
        # masked (query, key) pairs add nothing to any gradient, whatever the values there
        masked_t = np.swapaxes(masked, -1, -2)
        dv = _matmul_visible(np.swapaxes(p, -1, -2), do, masked_t).astype(q.dtype, copy=False)
        dp = do @ np.swapaxes(vr, -1, -2)
        ds = p * (dp - (do * o).sum(axis=-1, keepdims=True)) * q.dtype.type(scale)
        ds = np.where(masked, 0, ds)
        dq = _matmul_visible(ds, kr, masked).astype(q.dtype, copy=False)
        dk = _matmul_visible(np.swapaxes(ds, -1, -2), q, masked_t).astype(q.dtype, copy=False)
        if groups != 1:  # (groups 0: no query heads, zero gradients)
            b, h, t, d = k.shape
            dk = dk.reshape(b, h, groups, t, d).sum(axis=2)
            dv = dv.reshape(b, h, groups, t, d).sum(axis=2)
        return dq, np.ascontiguousarray(dk), np.ascontiguousarray(dv)

    # -- loss --------------------------------------------------------------------
    @staticmethod
    def _log_sum_exp(logits):
        mx = logits.max(axis=-1, keepdims=True)
        return (np.log(np.exp(logits - mx).sum(axis=-1, keepdims=True)) + mx)[:, 0]

    def _cross_entropy_forward(self, logits, targets, ignore_index, label_smoothing):
        lse = self._log_sum_exp(logits)
        counted = targets != ignore_index
        n = int(counted.sum())
        if n == 0:
            return 0.0, lse
        rows = np.nonzero(counted)[0]
        # a term of weight 0 is left out, not multiplied by 0: a -inf logit must not give 0 * inf
        per_row = np.zeros(rows.size, lse.dtype)
        if label_smoothing < 1.0:
            per_row = per_row + (1.0 - label_smoothing) * (lse[rows] - logits[rows, targets[rows]])
        if label_smoothing > 0.0:
            per_row = per_row + label_smoothing * (lse[rows] - logits[rows].mean(axis=-1))
        return float(per_row.astype(np.float64).sum() / n), lse

    def _cross_entropy_backward(self, logits, targets, lse, ignore_index, label_smoothing, grad):
        t = logits.dtype.type
        counted = targets != ignore_index
        n = int(counted.sum())
        d = np.exp(logits - lse[:, None]) - t(label_smoothing / logits.shape[1])
        rows = np.nonzero(counted)[0]
        d[rows, targets[rows]] -= t(1.0 - label_smoothing)
        d[~counted] = 0
        return d * t(grad / max(n, 1))

    # -- embedding ---------------------------------------------------------------
    def _embedding_forward(self, weight, ids):
        return weight[ids]

    def _embedding_backward(self, dy, ids, num_embeddings):
        dw = np.zeros((num_embeddings, dy.shape[-1]), dy.dtype)
        np.add.at(dw, ids.reshape(-1), dy.reshape(ids.size, dy.shape[-1]))
        return dw

    # -- rotary positions ----------------------------------------------------------
    @staticmethod
    def _rotate(x, cos, sin):
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = x0 * cos - x1 * sin
        out[..., 1::2] = x0 * sin + x1 * cos
        return out

    def _rope_forward(self, x, cos, sin):
        return self._rotate(x, cos, sin)

    def _rope_backward(self, dy, cos, sin):
        return self._rotate(dy, cos, -sin)

    # -- optimiser -------------------------------------------------------------------
    def _adamw_step(self, param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
        t = param.dtype.type
        param *= t(1.0 - lr * weight_decay)
        m *= t(beta1)
        m += t(1.0 - beta1) * grad
        v *= t(beta2)
        v += t(1.0 - beta2) * grad * grad
        mhat = m / t(1.0 - beta1**step)
        vhat = v / t(1.0 - beta2**step)
        param -= t(lr) * mhat / (np.sqrt(vhat) + t(eps))
