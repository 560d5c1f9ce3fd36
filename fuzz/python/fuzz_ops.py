"""Fuzz target: the public ops of ff.backend("rust") and ff.backend("numpy").

Each input picks an op, builds arguments that fit it from a few drawn sizes
(zero-size included) and then spoils some of them: another dtype, another
shape, a list, a scalar, None, a 0-d array, an out-of-range id or keyword
value, or a huge zero-stride view; each array comes in a drawn layout
(Fortran order, negative or gapped strides, read-only, unaligned, broadcast).

Verdicts: only TypeError, ValueError and IndexError (or a result) may come
out of an op. Where both backends return, the rust result equals the numpy
result on C-contiguous copies of the same arguments (same NaN and inf
positions, values within float32 rounding), and each backend gives that same
result for the drawn layouts; float32 arguments one backend accepts the
other accepts too.

    python fuzz/python/fuzz_ops.py -max_total_time=60 fuzz/work/py-ops fuzz/corpus/py-ops
"""

from __future__ import annotations

import math
import os
import sys

import atheris

with atheris.instrument_imports():
    import numpy as np

    import ferroformer as ff

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness

ALLOWED = (TypeError, ValueError, IndexError)
RUST, NUMPY = ff.backend("rust"), ff.backend("numpy")
F32 = np.float32
# ordinary values are multiples of 1/16 (float32 sums stay exact for a while)
SPECIAL = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-41], F32)
ODD_DTYPES = (np.float64, np.float16, np.int64, np.int32, np.uint8, np.bool_, np.complex64, object)


class Args:
    """Draws sizes, values and spoilers from the fuzz input."""

    def __init__(self, data: bytes):
        self.fdp = atheris.FuzzedDataProvider(data)
        self.spoil_rate = self.int(0, 6)  # chances in 64 that an argument is spoilt
        self.specials = self.int(0, 3)  # chances in 32 that a value is non-finite or odd
        self.extreme = False  # set when a scalar leaves the ordinary range
        self.huge = False  # set when an argument is a huge zero-stride view

    def int(self, lo, hi):
        return self.fdp.ConsumeIntInRange(lo, hi)

    def bool(self):
        return self.fdp.ConsumeBool()

    def pick(self, options):
        return options[self.int(0, len(options) - 1)]

    def dim(self, hi=6):
        """Mostly 0..hi, sometimes up to 40 (past the SIMD widths)."""
        return self.int(0, 40) if self.int(0, 7) == 0 else self.int(0, hi)

    def pos(self, hi=6):
        return max(1, self.dim(hi))

    def lead(self, max_rank=2):
        return tuple(self.dim(3) for _ in range(self.int(0, max_rank)))

    def floats(self, shape):
        n = math.prod(shape)
        raw = np.frombuffer(self.fdp.ConsumeBytes(n).ljust(n, b"\0"), np.int8)
        x = (raw.astype(F32) / 16).reshape(shape)
        if self.specials and n:
            odd = np.frombuffer(self.fdp.ConsumeBytes(n).ljust(n, b"\0"), np.uint8).reshape(shape)
            where = (odd % 32) < self.specials
            x[where] = SPECIAL[odd[where] % len(SPECIAL)]
        return x

    def ids(self, shape, vocab, ignore=None):
        n = math.prod(shape)
        raw = np.frombuffer(self.fdp.ConsumeBytes(n).ljust(n, b"\0"), np.uint8).astype(np.int64)
        ids = (raw % max(vocab, 1)).reshape(shape)
        if n and self.spoiled():
            flat = ids.reshape(-1)
            flat[self.int(0, n - 1)] = self.pick([-1, vocab, -(2**63), 2**63 - 1, -100])
        if ignore is not None and n and self.bool():
            ids.reshape(-1)[self.int(0, n - 1)] = ignore
        return ids

    def spoiled(self):
        return self.int(0, 63) < self.spoil_rate

    def scalar(self, ordinary, *, positive=False):
        """Mostly ``ordinary`` scaled a little; spoilt: 0, negative, NaN, inf, huge, odd types."""
        if not self.spoiled():
            return ordinary * (1 + self.int(0, 100) / 100)
        self.extreme = True
        return self.pick(
            [
                0.0,
                -ordinary,
                math.nan,
                math.inf,
                -math.inf,
                1e300,
                2**70,
                -1,
                None,
                "1",
                True,
                np.float32(ordinary),
                np.array(ordinary),
                [ordinary],
                1j,
            ]
        )

    # -- spoiling and layouts --------------------------------------------------
    def array(self, x, *, writeable=False):
        """x, perhaps spoilt, in a drawn layout (only C order where it is written in place)."""
        if self.spoiled():
            return self.spoil(x)
        return x if writeable and self.int(0, 3) else self.layout(x)

    def spoil(self, x):
        kind = self.int(0, 9)
        if kind == 0:
            dt = self.pick(ODD_DTYPES)
            try:
                return x.astype(dt)
            except (TypeError, ValueError):
                return x
        if kind == 1 and x.ndim:
            shape = list(x.shape)
            shape[self.int(0, x.ndim - 1)] = self.pick([0, 1, 2, 7])
            return np.zeros(shape, x.dtype)
        if kind == 2:
            return x.reshape((*x.shape, 1)) if self.bool() else x.reshape(-1)
        if kind == 3:
            return x.tolist()
        if kind == 4:
            return self.pick([None, 1.0, 3, "x", np.float32(1.0)])
        if kind == 5:
            return np.array(1.0, x.dtype)
        if kind == 6 and harness.HUGE and x.ndim:
            # huge but cheap: a zero-stride view whose element count no copy can hold
            shape = list(x.shape)
            shape[self.int(0, x.ndim - 1)] = self.pick([2**31, 2**40, 2**50])
            base = np.zeros(1, x.dtype)
            try:
                view = np.lib.stride_tricks.as_strided(
                    base, shape, [0] * len(shape), writeable=False
                )
            except ValueError:
                return x
            self.huge = True
            return view
        return self.layout(x)

    def layout(self, x):
        kind = self.int(0, 7)
        if not isinstance(x, np.ndarray) or x.ndim == 0 or kind == 0:
            return x
        if kind == 1:
            return np.asfortranarray(x)
        if kind == 2:
            return np.flip(np.flip(x).copy())  # negative strides, same values
        if kind == 3:
            buf = np.zeros((*x.shape[:-1], 2 * x.shape[-1] + 1), x.dtype)
            buf[..., 1::2] = x
            return buf[..., 1::2]
        if kind == 4:
            y = x.copy()
            y.flags.writeable = False
            return y
        if kind == 5:
            raw = np.zeros(x.nbytes + 1, np.uint8)[1:]
            y = raw.view(x.dtype).reshape(x.shape)
            y[...] = x
            return y
        if kind == 6 and x.shape[0] > 0:
            return np.broadcast_to(x[:1], x.shape)  # zero stride on axis 0 (other values)
        return x


# -- the ops: each builds its positional and keyword arguments -----------------------
def _floats(a, shape, **kw):
    return a.array(a.floats(shape), **kw)


def gen_matmul(a):
    m, k, n = a.dim(), a.dim(), a.dim()
    lead_a, lead_b = a.lead(), a.lead()
    if a.bool():
        lead_b = lead_a
    ta, tb = a.bool(), a.bool()
    sa = lead_a + ((k, m) if ta else (m, k))
    sb = lead_b + ((n, k) if tb else (k, n))
    return [_floats(a, sa), _floats(a, sb)], {"trans_a": ta, "trans_b": tb}


def gen_linear_forward(a):
    lead, i, o = (*a.lead(), a.dim()), a.dim(), a.dim()
    b = _floats(a, (o,)) if a.bool() else None
    return [_floats(a, (*lead, i)), _floats(a, (o, i)), b], {}


def gen_linear_backward(a):
    lead, i, o = (*a.lead(), a.dim()), a.dim(), a.dim()
    return [_floats(a, (*lead, o)), _floats(a, (*lead, i)), _floats(a, (o, i))], {
        "has_bias": a.bool()
    }


def gen_softmax_forward(a):
    shape = (*a.lead(), a.dim(), a.dim(60))
    return [_floats(a, shape)], {"scale": a.scalar(1.0), "causal": a.bool()}


def gen_softmax_backward(a):
    shape = (*a.lead(), a.dim(60))
    return [_floats(a, shape), _floats(a, shape)], {"scale": a.scalar(1.0)}


def gen_layernorm_forward(a):
    c, lead = a.dim(60), (*a.lead(), a.dim())
    return [_floats(a, (*lead, c)), _floats(a, (c,)), _floats(a, (c,))], {"eps": a.scalar(1e-5)}


def gen_layernorm_backward(a):
    c, lead = a.dim(60), (*a.lead(), a.dim())
    x, g, b = a.floats((*lead, c)), a.floats((c,)), a.floats((c,))
    _, mean, rstd = _reference_stats(lambda: NUMPY.layernorm_forward(x, g, b), lead, 3)
    return [_floats(a, (*lead, c)), a.array(x), a.array(g), a.array(mean), a.array(rstd)], {}


def gen_rmsnorm_forward(a):
    c, lead = a.dim(60), (*a.lead(), a.dim())
    return [_floats(a, (*lead, c)), _floats(a, (c,))], {"eps": a.scalar(1e-6)}


def gen_rmsnorm_backward(a):
    c, lead = a.dim(60), (*a.lead(), a.dim())
    x, g = a.floats((*lead, c)), a.floats((c,))
    (_, rstd) = _reference_stats(lambda: NUMPY.rmsnorm_forward(x, g), lead, 2)
    return [_floats(a, (*lead, c)), a.array(x), a.array(g), a.array(rstd)], {}


def _reference_stats(forward, lead, n):
    try:
        return forward()
    except ALLOWED:
        return [np.zeros(lead, F32)] * n


def _elementwise(n_in, keywords=None):
    def gen(a):
        shape = a.lead(3)
        kw = keywords(a) if keywords else {}
        return [_floats(a, shape) for _ in range(n_in)], kw

    return gen


def _approximate(a):
    return {
        "approximate": a.pick(["tanh", "none"])
        if not a.spoiled()
        else a.pick(["erf", "", None, 1, "TANH"])
    }


#: most score elements (B * Hq * Tq * Tk, and B * Hq * T * D) one attention input gets,
#: so that the float64 reference stays fast and small
ATTENTION_BUDGET = 1 << 18


def _attention_sizes(a):
    kv = a.pos(3)
    hq = kv * a.pos(3) if not a.spoiled() else a.dim(5)
    b, tq, tk, d = a.dim(2), a.dim(8), a.dim(8), a.pos(20)

    def size():
        return max(b * hq * tq * tk, b * hq * max(tq, tk) * d, b * kv * tk * d)

    if size() > ATTENTION_BUDGET:
        b, tq, tk = min(b, 2), min(tq, 8), min(tk, 8)
    if size() > ATTENTION_BUDGET:
        d = min(d, 8)
    return b, hq, kv, tq, tk, d


def _mask(a, b, tk):
    if a.bool():
        return None
    n = b * tk
    bits = np.frombuffer(a.fdp.ConsumeBytes(n).ljust(n, b"\0"), np.uint8) % 2 == 1
    return a.array(bits.reshape(b, tk))


def gen_attention_forward(a):
    b, hq, hkv, tq, tk, d = _attention_sizes(a)
    kw = {"causal": a.bool(), "scale": None if a.bool() else a.scalar(0.5)}
    kv_len = None
    if a.bool():
        kv_len = a.int(0, tk + 1) if not a.spoiled() else a.pick([-1, 0, 2**63, 1.5, "2", None])
        kw["kv_len"] = kv_len
    kw["key_padding_mask"] = _mask(a, b, tk)
    return [
        _floats(a, (b, hq, tq, d)),
        _floats(a, (b, hkv, tk, d)),
        _floats(a, (b, hkv, tk, d)),
    ], kw


def gen_attention_backward(a):
    b, hq, hkv, tq, tk, d = _attention_sizes(a)
    q, k, v = a.floats((b, hq, tq, d)), a.floats((b, hkv, tk, d)), a.floats((b, hkv, tk, d))
    kw = {"causal": a.bool(), "scale": None if a.bool() else a.scalar(0.5)}
    mask = _mask(a, b, tk)
    kw["key_padding_mask"] = mask
    try:
        o, lse = NUMPY.attention_forward(q, k, v, **kw)
    except ALLOWED:
        o, lse = np.zeros_like(q), np.zeros((b, hq, tq), F32)
    return [_floats(a, q.shape), a.array(q), a.array(k), a.array(v), a.array(o), a.array(lse)], kw


def _ce(a):
    n, v = a.dim(), a.pos(60)
    ignore = -100 if not a.spoiled() else a.pick([0, -1, v, 2**63 - 1, 1.5, None, "x"])
    kw = {"ignore_index": ignore}
    if a.bool():
        kw["label_smoothing"] = a.pick([0.0, 0.1, 1.0]) if not a.spoiled() else a.scalar(0.1)
    targets = a.ids((n,), v, ignore if isinstance(ignore, int) else None)
    if a.spoiled():
        targets = targets.astype(a.pick([np.int32, np.uint8, np.float32, np.int16]))
    return n, v, targets, kw


def gen_cross_entropy_forward(a):
    n, v, targets, kw = _ce(a)
    return [_floats(a, (n, v)), a.array(targets)], kw


def gen_cross_entropy_backward(a):
    n, v, targets, kw = _ce(a)
    logits = a.floats((n, v))
    try:
        _, lse = NUMPY.cross_entropy_forward(logits, targets, **kw)
    except ALLOWED:
        lse = np.zeros((n,), F32)
    kw["grad"] = a.scalar(1.0)
    return [a.array(logits), a.array(targets), a.array(lse)], kw


def gen_embedding_forward(a):
    vocab, c = a.dim(), a.dim()
    return [_floats(a, (vocab, c)), a.array(a.ids(a.lead(3), vocab))], {}


def gen_embedding_backward(a):
    vocab, c, shape = a.dim(), a.dim(), a.lead(3)
    num = vocab if not a.spoiled() else a.pick([0, -1, 2**63, 2**40, 1.5, None])
    return [_floats(a, (*shape, c)), a.array(a.ids(shape, vocab)), num], {}


def _rope(a):
    t, half = a.dim(), a.dim(20)
    shape = (*a.lead(), t, 2 * half + (1 if a.spoiled() else 0))
    return [_floats(a, shape), _floats(a, (t, half)), _floats(a, (t, half))], {}


def gen_adamw_step(a):
    shape = a.lead(3)
    p, g, m, v = (a.floats(shape) for _ in range(4))
    v = np.abs(v)
    kw = {
        "lr": a.scalar(1e-3),
        "beta1": a.scalar(0.45),
        "beta2": a.scalar(0.499),
        "eps": a.scalar(1e-8),
        "weight_decay": a.scalar(0.01),
        "step": a.int(1, 100) if not a.spoiled() else a.pick([0, -1, 2**64, 1.5, None]),
    }
    return [
        a.array(p, writeable=True),
        a.array(g),
        a.array(m, writeable=True),
        a.array(v, writeable=True),
    ], kw


OPS = {
    "matmul": gen_matmul,
    "linear_forward": gen_linear_forward,
    "linear_backward": gen_linear_backward,
    "softmax_forward": gen_softmax_forward,
    "softmax_backward": gen_softmax_backward,
    "layernorm_forward": gen_layernorm_forward,
    "layernorm_backward": gen_layernorm_backward,
    "rmsnorm_forward": gen_rmsnorm_forward,
    "rmsnorm_backward": gen_rmsnorm_backward,
    "gelu_forward": _elementwise(1, _approximate),
    "gelu_backward": _elementwise(2, _approximate),
    "relu_forward": _elementwise(1),
    "relu_backward": _elementwise(2),
    "silu_forward": _elementwise(1),
    "silu_backward": _elementwise(2),
    "swiglu_forward": _elementwise(2),
    "swiglu_backward": _elementwise(3),
    "attention_forward": gen_attention_forward,
    "attention_backward": gen_attention_backward,
    "cross_entropy_forward": gen_cross_entropy_forward,
    "cross_entropy_backward": gen_cross_entropy_backward,
    "embedding_forward": gen_embedding_forward,
    "embedding_backward": gen_embedding_backward,
    "rope_forward": _rope,
    "rope_backward": _rope,
    "adamw_step": gen_adamw_step,
}
NAMES = sorted(OPS)


# -- running and comparing ---------------------------------------------------------------
def _copy(x, dtype=None):
    """A C-contiguous, writeable copy of an array argument (float32 ones as ``dtype``
    when given); other values, and views too big to copy, as they are."""
    if not isinstance(x, np.ndarray) or x.size > 1 << 22:
        return x
    return np.array(x, dtype=dtype if dtype is not None and x.dtype == F32 else None, order="C")


def _fresh(x):
    """What one backend gets of an argument: its own copy where an op may write into it
    (a C-contiguous writeable array), else the argument itself."""
    if isinstance(x, np.ndarray) and x.flags.writeable and x.flags.c_contiguous:
        return x.copy()
    return x


def _call(backend, op, args, kw, huge=False):
    """(result or None, exception or None); in-place ops return their updated arguments.
    With ``huge`` (an argument is a huge zero-stride view) a MemoryError is a refusal too:
    the result such an input asks for cannot be held."""
    args = list(args)
    try:
        out = getattr(backend, op)(*args, **kw)
    except ALLOWED as e:
        return None, e
    except MemoryError as e:
        if not huge:
            raise
        return None, e
    if op == "adamw_step":
        out = (args[0], args[2], args[3])
    return out, None


def _outputs(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _cancellation(op, args):
    """The float32 rounding a norm's backward cannot avoid: dx is ``rstd (g dy -
    mean(g dy) - xhat mean(g dy xhat))``, whose terms cancel; with statistics that do
    not fit x (the generator's arrays may replace them) ``|xhat|`` is large and the
    float32 result is off by about ``C eps rstd |g dy| (1 + |xhat|)^2`` however it is
    computed. The allowance for output 0, as an absolute error."""
    if op not in ("layernorm_backward", "rmsnorm_backward"):
        return 0.0
    dy, x, gamma = (np.asarray(v, np.float64) for v in args[:3])
    if op == "layernorm_backward":
        mean, rstd = (np.asarray(v, np.float64) for v in args[3:5])
        xhat = (x - mean[..., None]) * rstd[..., None]
    else:
        rstd = np.asarray(args[3], np.float64)
        xhat = x * rstd[..., None]
    c = x.shape[-1]
    with np.errstate(all="ignore"):
        term = (
            np.abs(rstd[..., None])
            * np.abs(gamma * dy).max(axis=-1, keepdims=True)
            * (1 + np.abs(xhat).max(axis=-1, keepdims=True)) ** 2
        )
        slack = float(np.nan_to_num(term, nan=0.0, posinf=0.0).max(initial=0.0))
    return 64 * c * float(np.finfo(np.float32).eps) * slack


def _compare(op, what, got, want, slack=0.0):
    got, want = _outputs(got), _outputs(want)
    if len(got) != len(want):
        raise harness.Finding(
            f"mismatch-arity:{what}", f"{op}: {len(got)} outputs, numpy gives {len(want)}"
        )
    for i, (g, w) in enumerate(zip(got, want)):
        if w is None or g is None:
            if (w is None) != (g is None):
                raise harness.Finding(
                    f"mismatch-none:{what}", f"{op} output {i}: {g!r} vs numpy {w!r}"
                )
            continue
        g, w = np.asarray(g), np.asarray(w)
        if g.shape != w.shape:
            raise harness.Finding(
                f"mismatch-shape:{what}", f"{op} output {i}: shape {g.shape} vs numpy {w.shape}"
            )
        if g.ndim and g.dtype != F32:
            raise harness.Finding(
                f"mismatch-dtype:{what}", f"{op} output {i}: {g.dtype} from float32 inputs"
            )
        g64, w64 = g.astype(np.float64), w.astype(np.float64)
        if not np.array_equal(np.isnan(g64), np.isnan(w64)):
            j = np.flatnonzero(np.isnan(g64) != np.isnan(w64))[0]
            raise harness.Finding(
                f"mismatch-nan:{what}",
                f"{op} output {i} at flat {j}: "
                f"{g64.flat[j]} vs numpy {w64.flat[j]} (shape {g.shape})",
            )
        inf_g, inf_w = np.isinf(g64), np.isinf(w64)
        if not np.array_equal(inf_g, inf_w) or not np.array_equal(g64[inf_g], w64[inf_w]):
            j = np.flatnonzero((inf_g != inf_w) | (np.isinf(g64) & (g64 != w64)))[0]
            raise harness.Finding(
                f"mismatch-inf:{what}",
                f"{op} output {i} at flat {j}: "
                f"{g64.flat[j]} vs numpy {w64.flat[j]} (shape {g.shape})",
            )
        fin = np.isfinite(w64)
        scale = max(1.0, float(np.abs(w64[fin]).max(initial=0.0)))
        allow = 1e-3 * scale + (slack if i == 0 else 0.0)
        bad = np.abs(g64 - w64)[fin] > allow + 1e-3 * np.abs(w64[fin])
        if bad.any():
            j = np.flatnonzero(fin)[np.flatnonzero(bad)[0]]
            raise harness.Finding(
                f"mismatch-value:{what}",
                f"{op} output {i} at flat {j}: "
                f"{g64.flat[j]} vs numpy {w64.flat[j]} (shape {g.shape})",
            )


def _all_float32(args, kw):
    """Whether every argument is an array of the dtypes both backends take, small enough to copy."""
    values = [
        x
        for x in list(args) + list(kw.values())
        if x is not None and not isinstance(x, (bool, int, float, str))
    ]
    return all(
        isinstance(x, np.ndarray) and x.dtype in (F32, np.int64, np.bool_) and x.size <= 1 << 22
        for x in values
    )


def one_input(data: bytes) -> None:
    a = Args(data)
    op = NAMES[a.int(0, len(NAMES) - 1)]
    harness.label = op
    args, kw = OPS[op](a)
    got_np, np_err = _call(NUMPY, op, [_fresh(x) for x in args], kw, a.huge)
    got_rs, rs_err = _call(RUST, op, [_fresh(x) for x in args], kw, a.huge)
    ordinary = not a.extreme and not a.huge and _all_float32(args, kw)
    if not ordinary:
        return
    # the reference: the numpy backend in float64 on C-contiguous copies
    want, want_err = _call(
        NUMPY,
        op,
        [_copy(x, np.float64) for x in args],
        {k: _copy(v, np.float64) for k, v in kw.items()},
    )
    if want_err is None:
        slack = _cancellation(op, args)
        if got_np is not None:
            _compare(op, "numpy-layout", got_np, want, slack)
        if got_rs is not None:
            _compare(op, "rust", got_rs, want, slack)
    if (rs_err is None) != (np_err is None):
        err = rs_err or np_err
        who = "rust" if rs_err is not None else "numpy"
        raise harness.Finding(
            f"mismatch-accept:{who}-refuses",
            f"{op}: {who} raises {type(err).__name__}: {err} where the other returns",
        )


if __name__ == "__main__":
    harness.run(one_input, ALLOWED)
