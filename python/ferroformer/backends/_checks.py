"""Argument checks shared by every backend, so that the same bad input gets
the same clear exception whichever backend runs it.

A wrong dtype or type is a ``TypeError`` (``None``, a list or a Python
scalar where an array belongs included); sizes that do not fit together are
a ``ValueError`` that names the op and the shapes; an out-of-range id or
target is an ``IndexError``; an output (or the contiguous copies of the
inputs) larger than the memory the process can have is a ``ValueError``
raised before anything is allocated. Scalars: a real number where a float
belongs (finite and within float32's range, which the fast backends compute
in), an integer where an int belongs (not a bool, not a float), a bool
where a flag belongs.

The checks cost little on the hot path: each compares shapes and dtypes
directly and calls a helper only to build the message of an error.
"""

from __future__ import annotations

import math
import operator
import os
from typing import Optional, Sequence, Tuple

import numpy as np

Shape = Tuple[int, ...]

F32_MAX = float(np.finfo(np.float32).max)
INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: Outputs plus inputs below this many bytes are never near any memory limit,
#: so the exact accounting of ``room`` is skipped for them.
ROOM_FAST = 1 << 28


# -- arrays ----------------------------------------------------------------------
def shape_error(op: str, what: str, **shapes) -> ValueError:
    got = ", ".join(f"{name} {tuple(s) if s is not None else None}" for name, s in shapes.items())
    return ValueError(f"{op}: {what} (got {got})")


def _type_name(x) -> str:
    if isinstance(x, (bool, int, float, complex)):
        return f"a Python {type(x).__name__} ({x!r})"
    return type(x).__name__


def require_array(op: str, name: str, x, array_type) -> None:
    if not isinstance(x, array_type):
        raise TypeError(
            f"{op}: {name} must be a {array_type.__module__}.{array_type.__name__}, "
            f"got {_type_name(x)}"
        )


def _dtype_error(op: str, name: str, dtype, want, allowed: Sequence, backend: str) -> TypeError:
    if want is None:
        names = ", ".join(str(d) for d in allowed)
        return TypeError(
            f"{op}: {name} has dtype {dtype}, but the {backend} backend computes in "
            f"{names}; cast it with .astype(...)"
        )
    return TypeError(f"{op}: {name} has dtype {dtype} but the other inputs are {want}")


def floats(op: str, arrays: dict, array_type, allowed: Sequence, backend: str):
    """Checks that every value is an array of one floating dtype among ``allowed``;
    returns that dtype."""
    dtype = None
    for name, x in arrays.items():
        if not isinstance(x, array_type):
            require_array(op, name, x, array_type)
        d = x.dtype
        if d is not dtype:
            if dtype is None:
                if d not in allowed:
                    raise _dtype_error(op, name, d, None, allowed, backend)
                dtype = d
            elif d != dtype:
                raise _dtype_error(op, name, d, dtype, allowed, backend)
    return dtype


def require_float(op: str, arrays: dict, allowed: Sequence, backend: str) -> object:
    """Checks that every array is floating point of one allowed dtype; returns it."""
    dtype = None
    for name, x in arrays.items():
        if x is None:
            continue
        if x.dtype not in allowed:
            raise _dtype_error(op, name, x.dtype, None, allowed, backend)
        if dtype is None:
            dtype = x.dtype
        elif x.dtype != dtype:
            raise _dtype_error(op, name, x.dtype, dtype, allowed, backend)
    return dtype


def require_int(op: str, name: str, x) -> None:
    if x.dtype.kind not in "iu":
        raise TypeError(f"{op}: {name} must hold integers, got dtype {x.dtype}")


def require_stat(op: str, name: str, x, array_type, allowed: Sequence) -> None:
    """A statistic (lse): an array of one of ``allowed`` or float32, whatever the
    dtype of the other inputs."""
    if not isinstance(x, array_type):
        require_array(op, name, x, array_type)
    if x.dtype not in allowed and x.dtype != np.float32:
        names = ", ".join(str(d) for d in allowed)
        raise TypeError(f"{op}: {name} has dtype {x.dtype}; statistics are float32 (or {names})")


def require_ndim(op: str, name: str, x, ndim: int, exact: bool = False) -> None:
    if (x.ndim != ndim) if exact else (x.ndim < ndim):
        need = f"exactly {ndim}" if exact else f"at least {ndim}"
        raise ValueError(f"{op}: {name} needs {need} dimensions, got shape {tuple(x.shape)}")


def require_same_shape(op: str, **arrays) -> None:
    shapes = {name: tuple(x.shape) for name, x in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise shape_error(op, "shapes must match", **shapes)


def writable_in_place(op: str, name: str, x) -> None:
    """An array updated in place: C-contiguous, aligned and writeable (CuPy arrays
    have neither flags.aligned nor flags.writeable and are always both)."""
    f = x.flags
    if not (f.c_contiguous and getattr(f, "aligned", True) and getattr(f, "writeable", True)):
        raise ValueError(
            f"{op}: {name} must be C-contiguous, aligned and writeable to update in place "
            f"(got shape {tuple(x.shape)}, strides {tuple(x.strides)}, "
            f"writeable={getattr(f, 'writeable', True)})"
        )


def distinct(op: str, xp, **arrays) -> None:
    """Arrays written in place (and the gradient read beside them) must not overlap.
    NumPy and CuPy point every view at the array that owns the memory, so only
    arrays with one owner can overlap; the exact test runs for those alone."""
    owners = {id(x if x.base is None else x.base) for x in arrays.values()}
    if len(owners) == len(arrays):
        return
    items = list(arrays.items())
    overlap = getattr(xp, "may_share_memory", None)
    for i, (na, a) in enumerate(items):
        for nb, b in items[i + 1 :]:
            oa, ob = (a if a.base is None else a.base), (b if b.base is None else b.base)
            if oa is ob and a.size and b.size and (overlap is None or overlap(a, b)):
                raise ValueError(f"{op}: {na} and {nb} share memory; each needs its own array")


# -- memory ------------------------------------------------------------------------
def host_memory_limit() -> int:
    """Bytes this process may hold: physical memory, or less where an
    address-space or data limit (RLIMIT_AS, RLIMIT_DATA) is set."""
    try:
        limit = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        limit = INT64_MAX
    try:
        import resource
    except ImportError:  # not on Windows
        return limit
    for which in ("RLIMIT_AS", "RLIMIT_DATA"):
        try:
            soft, _ = resource.getrlimit(getattr(resource, which))
        except (AttributeError, ValueError, OSError):
            continue
        if soft != resource.RLIM_INFINITY and soft > 0:
            limit = min(limit, soft)
    return limit


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB"


def room(op: str, out_bytes: int, arrays, limit: int) -> None:
    """Refuses a call whose outputs plus the contiguous copies of its inputs
    (an input that is not C-contiguous and aligned, such as a broadcast view of
    a few values standing for billions, is copied by the fast backends) need
    more than ``limit`` bytes. Python integers do not overflow, so neither
    does this sum."""
    need = out_bytes
    for x in arrays:
        f = x.flags
        if not (f.c_contiguous and getattr(f, "aligned", True)):
            need += x.size * x.itemsize
    if need > limit:
        shapes = ", ".join(str(tuple(x.shape)) for x in arrays)
        raise ValueError(
            f"{op}: the call needs {_gib(need)} for its result and copies, more than the "
            f"{_gib(limit)} of memory this process can have (inputs {shapes})"
        )


# -- scalars ------------------------------------------------------------------------
def _not_a(op: str, name: str, what: str, value) -> TypeError:
    return TypeError(f"{op}: {name} must be {what}, got {_type_name(value)}")


def real(
    op: str,
    name: str,
    value,
    low: Optional[float] = None,
    high: Optional[float] = None,
    high_open: bool = False,
) -> float:
    """``value`` as a float: a real number (a 0-d real array too; not a bool, a
    string or a complex number), finite within float32's range and the bounds."""
    if isinstance(value, float):  # np.float64 too
        v = float(value)
    else:
        if isinstance(value, (bool, np.bool_, str, bytes, complex, np.complexfloating)):
            raise _not_a(op, name, "a real number", value)
        if isinstance(value, np.ndarray) and (value.ndim or value.dtype.kind not in "iuf"):
            raise _not_a(op, name, "a real number", value)
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise _not_a(op, name, "a real number", value) from None
        except OverflowError:  # an int past float's range
            v = math.inf
    if (
        not -F32_MAX <= v <= F32_MAX
        or (low is not None and v < low)
        or (high is not None and (v >= high if high_open else v > high))
    ):
        rule = "finite (within float32's range)"
        if low is not None or high is not None:
            rule += f" and in [{low if low is not None else '-inf'}, "
            rule += f"{high if high is not None else 'inf'}{')' if high_open else ']'}"
        raise ValueError(f"{op}: {name} must be {rule}, got {value!r}")
    return v


def integer(op: str, name: str, value, low: int = INT64_MIN, high: int = INT64_MAX) -> int:
    """``value`` as an int (a NumPy integer or a 0-d integer array too; not a bool
    or a float), within [low, high] (int64's range by default)."""
    if type(value) is int:
        v = value
    else:
        if isinstance(value, (bool, np.bool_)):
            raise _not_a(op, name, "an integer", value)
        try:
            v = operator.index(value)
        except TypeError:
            raise _not_a(op, name, "an integer", value) from None
    if not low <= v <= high:
        raise ValueError(f"{op}: {name} must be an integer in [{low}, {high}], got {v}")
    return v


def flag(op: str, name: str, value) -> bool:
    """``value`` as a bool: True, False or a NumPy bool (not 0, 1, None or a string)."""
    if value is True or value is False:
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    raise _not_a(op, name, "a bool", value)


# -- shapes ---------------------------------------------------------------------------
def broadcast_batch(op: str, a: Shape, b: Shape) -> Shape:
    """NumPy broadcasting of two batch shapes, with an error naming the op."""
    if a == b:
        return a
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x != y and x != 1 and y != 1:
            raise shape_error(op, "batch dimensions do not broadcast", a=a, b=b)
        out.append(max(x, y) if min(x, y) != 0 else 0)
    return tuple(reversed(out))


def matmul_shape(a: Shape, b: Shape, trans_a: bool, trans_b: bool) -> Shape:
    op = "matmul"
    if len(a) < 2 or len(b) < 2:
        raise shape_error(op, "both operands need at least 2 dimensions", a=a, b=b)
    m, ka = (a[-1], a[-2]) if trans_a else (a[-2], a[-1])
    kb, n = (b[-1], b[-2]) if trans_b else (b[-2], b[-1])
    if ka != kb:
        raise shape_error(
            op,
            f"inner dimensions differ ({ka} vs {kb}; trans_a={trans_a}, trans_b={trans_b})",
            a=a,
            b=b,
        )
    return (*broadcast_batch(op, a[:-2], b[:-2]), m, n)


def linear_shapes(x: Shape, w: Shape, b: Optional[Shape]) -> None:
    op = "linear_forward"
    if len(w) != 2 or len(x) < 1 or x[-1] != w[1]:
        raise shape_error(op, "need x (..., in) and w (out, in)", x=x, w=w)
    if b is not None and tuple(b) != (w[0],):
        raise shape_error(op, "bias must be (out,)", w=w, b=b)


_FORMAT_OF: dict = {}  # type names seen -> BlockFormat


def quantized_format(op: str, qtype):
    """The BlockFormat of ``qtype`` (a name or a GGML type number); TypeError for
    another kind of value, ValueError naming a type that is not supported."""
    if type(qtype) is str:  # the common case, once per product: no import, no lookup
        fmt = _FORMAT_OF.get(qtype)
        if fmt is not None:
            return fmt
    from ..quant.formats import block_format

    if isinstance(qtype, (bool, np.bool_)):
        raise _not_a(op, "qtype", "a block type name or a GGML type number", qtype)
    try:
        fmt = block_format(qtype)
        if type(qtype) is str:
            _FORMAT_OF[qtype] = fmt
        return fmt
    except TypeError:
        raise _not_a(op, "qtype", "a block type name or a GGML type number", qtype) from None
    except ValueError as e:
        raise ValueError(f"{op}: {e}") from None


def quantized_weight(op: str, qweight, device_type) -> None:
    """qweight: raw blocks, a uint8 array on the host (numpy) or on the backend."""
    if not isinstance(qweight, (np.ndarray, device_type)):
        raise TypeError(
            f"{op}: qweight must be a numpy.ndarray of raw blocks, got {_type_name(qweight)}"
        )
    if qweight.dtype != np.uint8:
        raise TypeError(f"{op}: qweight holds raw blocks and must be uint8, got {qweight.dtype}")


def quantized_shapes(op: str, fmt, x: Shape, w: Shape, b: Optional[Shape]) -> None:
    if len(w) != 2 or w[1] % fmt.type_size:
        raise shape_error(
            op,
            f"qweight must be (out, row_bytes) with rows of whole {fmt.name} "
            f"blocks ({fmt.type_size} bytes each)",
            x=x,
            qweight=w,
        )
    in_f = w[1] // fmt.type_size * fmt.block_size
    if len(x) < 1 or x[-1] != in_f:
        raise shape_error(
            op,
            f"need x (..., in) with in = {in_f}, the in_features of the "
            f"{fmt.name} weight ({w[0]}, {in_f})",
            x=x,
            qweight=w,
        )
    if b is not None and tuple(b) != (w[0],):
        raise shape_error(op, "bias must be (out,)", qweight=w, bias=b)


def linear_backward_shapes(dy: Shape, x: Shape, w: Shape) -> None:
    op = "linear_backward"
    if len(w) != 2 or len(x) < 1 or x[-1:] != (w[1],) or dy[-1:] != (w[0],) or dy[:-1] != x[:-1]:
        raise shape_error(op, "need dy (..., out), x (..., in), w (out, in)", dy=dy, x=x, w=w)


def causal_shape(op: str, x: Shape) -> None:
    if len(x) < 2:
        raise shape_error(op, "a causal mask needs at least 2 dimensions (..., Tq, Tk)", x=x)


def norm_shapes(op: str, x: Shape, **params: Optional[Shape]) -> None:
    if len(x) < 1:
        raise shape_error(op, "x needs at least 1 dimension", x=x)
    if x[-1] == 0 and math.prod(x[:-1]):
        raise shape_error(
            op, "the rows of x are empty (C = 0): their statistics are undefined", x=x
        )
    for name, s in params.items():
        if s is not None and tuple(s) != (x[-1],):
            raise shape_error(
                op, f"{name} must be ({x[-1]},), the last dimension of x", x=x, **{name: s}
            )


def stats_shape(op: str, x: Shape, **stats: Shape) -> None:
    for name, s in stats.items():
        if tuple(s) != tuple(x[:-1]):
            raise shape_error(op, f"{name} must have shape x.shape[:-1]", x=x, **{name: s})


def cross_entropy_shapes(op: str, logits: Shape, targets: Shape) -> None:
    if len(logits) != 2 or tuple(targets) != (logits[0],):
        raise shape_error(op, "need logits (N, V) and targets (N,)", logits=logits, targets=targets)
    if logits[1] == 0:
        raise shape_error(op, "the vocabulary is empty", logits=logits)


def check_targets(op: str, targets, num_classes: int, ignore_index: int, xp) -> None:
    """IndexError for a target outside [0, num_classes) that is not ignore_index.
    In-range targets (the usual case) cost one min and one max, no temporaries."""
    if targets.size == 0:
        return
    lo, hi = int(targets.min()), int(targets.max())
    if lo >= 0 and hi < num_classes:
        return
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= num_classes))
    if bool(xp.any(bad)):
        i = int(xp.argmax(bad))
        raise IndexError(
            f"{op}: target {int(targets[i])} at row {i} is outside [0, {num_classes}) "
            f"and is not ignore_index={ignore_index}"
        )


def check_ids(op: str, ids, num_embeddings: int, xp) -> None:
    if ids.size == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= num_embeddings:
        bad = lo if lo < 0 else hi
        raise IndexError(f"{op}: id {bad} is outside [0, {num_embeddings})")


def rope_shapes(op: str, x: Shape, cos: Shape, sin: Shape, name: str = "x") -> None:
    if len(x) < 2 or x[-1] % 2:
        raise shape_error(op, f"{name} must be (..., T, D) with D even", **{name: x})
    want = (x[-2], x[-1] // 2)
    if tuple(cos) != want or tuple(sin) != want:
        raise shape_error(
            op, f"cos and sin must be (T, D/2) = {want}", **{name: x}, cos=cos, sin=sin
        )


def attention_shapes(op: str, q: Shape, k: Shape, v: Shape, mask: Optional[Shape]) -> None:
    if len(q) != 4 or len(k) != 4 or len(v) != 4:
        raise shape_error(op, "q, k, v must be 4-D (B, H, T, D)", q=q, k=k, v=v)
    if tuple(k) != tuple(v) or q[0] != k[0] or q[3] != k[3]:
        raise shape_error(op, "need q (B, Hq, Tq, D) and k, v (B, Hkv, Tk, D)", q=q, k=k, v=v)
    if k[1] == 0 or q[1] % k[1]:
        raise shape_error(op, "query heads must be a multiple of key/value heads", q=q, k=k)
    if q[3] == 0:
        raise shape_error(op, "the head dim D must be at least 1 (the scale is 1/sqrt(D))", q=q)
    if mask is not None and tuple(mask) != (k[0], k[2]):
        raise shape_error(op, "key_padding_mask must be (B, Tk)", k=k, key_padding_mask=mask)


def adamw_shapes(param: Shape, grad: Shape, m: Shape, v: Shape, step: int) -> None:
    op = "adamw_step"
    if not (tuple(param) == tuple(grad) == tuple(m) == tuple(v)):
        raise shape_error(
            op, "param, grad, m and v must have one shape", param=param, grad=grad, m=m, v=v
        )
    if step < 1:
        raise ValueError(f"{op}: step counts from 1, got {step}")


APPROXIMATIONS = ("tanh", "none")


def gelu_approximate(op: str, approximate: str) -> None:
    if not isinstance(approximate, str):
        raise _not_a(op, "approximate", "the string 'tanh' or 'none'", approximate)
    if approximate not in APPROXIMATIONS:
        raise ValueError(f"{op}: approximate must be 'tanh' or 'none', got {approximate!r}")
