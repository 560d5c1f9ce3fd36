"""Argument checks shared by every backend, so that the same bad input gets
the same clear exception whichever backend runs it.

A wrong dtype is a ``TypeError``; sizes that do not fit together are a
``ValueError`` that names the op and the shapes; an out-of-range id or target
is an ``IndexError`` (raised where the ids are read).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

Shape = Tuple[int, ...]


def shape_error(op: str, what: str, **shapes) -> ValueError:
    got = ", ".join(f"{name} {tuple(s) if s is not None else None}" for name, s in shapes.items())
    return ValueError(f"{op}: {what} (got {got})")


def require_array(op: str, name: str, x, array_type) -> None:
    if not isinstance(x, array_type):
        raise TypeError(
            f"{op}: {name} must be a {array_type.__module__}.{array_type.__name__}, "
            f"got {type(x).__name__}"
        )


def require_float(op: str, arrays: dict, allowed: Sequence, backend: str) -> object:
    """Checks that every array is floating point of one allowed dtype; returns it."""
    dtype = None
    for name, x in arrays.items():
        if x is None:
            continue
        if x.dtype not in allowed:
            names = ", ".join(str(d) for d in allowed)
            raise TypeError(
                f"{op}: {name} has dtype {x.dtype}, but the {backend} backend computes in "
                f"{names}; cast it with .astype(...)"
            )
        if dtype is None:
            dtype = x.dtype
        elif x.dtype != dtype:
            raise TypeError(f"{op}: {name} has dtype {x.dtype} but the other inputs are {dtype}")
    return dtype


def require_int(op: str, name: str, x) -> None:
    if x.dtype.kind not in "iu":
        raise TypeError(f"{op}: {name} must hold integers, got dtype {x.dtype}")


def require_ndim(op: str, name: str, x, ndim: int, exact: bool = False) -> None:
    if (x.ndim != ndim) if exact else (x.ndim < ndim):
        need = f"exactly {ndim}" if exact else f"at least {ndim}"
        raise ValueError(f"{op}: {name} needs {need} dimensions, got shape {tuple(x.shape)}")


def require_same_shape(op: str, **arrays) -> None:
    shapes = {name: tuple(x.shape) for name, x in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise shape_error(op, "shapes must match", **shapes)


def broadcast_batch(op: str, a: Shape, b: Shape) -> Shape:
    """NumPy broadcasting of two batch shapes, with an error naming the op."""
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


def linear_backward_shapes(dy: Shape, x: Shape, w: Shape) -> None:
    op = "linear_backward"
    if len(w) != 2 or x[-1:] != (w[1],) or dy[-1:] != (w[0],) or dy[:-1] != x[:-1]:
        raise shape_error(op, "need dy (..., out), x (..., in), w (out, in)", dy=dy, x=x, w=w)


def causal_shape(op: str, x: Shape) -> None:
    if len(x) < 2:
        raise shape_error(op, "a causal mask needs at least 2 dimensions (..., Tq, Tk)", x=x)


def norm_shapes(op: str, x: Shape, **params: Optional[Shape]) -> None:
    if len(x) < 1:
        raise shape_error(op, "x needs at least 1 dimension", x=x)
    for name, s in params.items():
        if s is not None and tuple(s) != (x[-1],):
            raise shape_error(op, f"{name} must be ({x[-1]},), the last dimension of x", x=x, **{name: s})


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


def rope_shapes(op: str, x: Shape, cos: Shape, sin: Shape) -> None:
    if len(x) < 2 or x[-1] % 2:
        raise shape_error(op, "x must be (..., T, D) with D even", x=x)
    want = (x[-2], x[-1] // 2)
    if tuple(cos) != want or tuple(sin) != want:
        raise shape_error(op, f"cos and sin must be (T, D/2) = {want}", x=x, cos=cos, sin=sin)


def attention_shapes(op: str, q: Shape, k: Shape, v: Shape, mask: Optional[Shape]) -> None:
    if len(q) != 4 or len(k) != 4 or len(v) != 4:
        raise shape_error(op, "q, k, v must be 4-D (B, H, T, D)", q=q, k=k, v=v)
    if tuple(k) != tuple(v) or q[0] != k[0] or q[3] != k[3]:
        raise shape_error(op, "need q (B, Hq, Tq, D) and k, v (B, Hkv, Tk, D)", q=q, k=k, v=v)
    if k[1] == 0 or q[1] % k[1]:
        raise shape_error(op, "query heads must be a multiple of key/value heads", q=q, k=k)
    if mask is not None and tuple(mask) != (k[0], k[2]):
        raise shape_error(op, "key_padding_mask must be (B, Tk)", k=k, key_padding_mask=mask)


def adamw_shapes(param: Shape, grad: Shape, m: Shape, v: Shape, step: int) -> None:
    op = "adamw_step"
    if not (tuple(param) == tuple(grad) == tuple(m) == tuple(v)):
        raise shape_error(op, "param, grad, m and v must have one shape", param=param, grad=grad, m=m, v=v)
    if step < 1:
        raise ValueError(f"{op}: step counts from 1, got {step}")


APPROXIMATIONS = ("tanh", "none")


def gelu_approximate(op: str, approximate: str) -> None:
    if approximate not in APPROXIMATIONS:
        raise ValueError(f"{op}: approximate must be 'tanh' or 'none', got {approximate!r}")
