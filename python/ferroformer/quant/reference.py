"""The NumPy reference of the quantized product: dequantize, then multiply.

    y = quantized_linear_forward(x, qweight, "Q4_K", bias=None)
    # x (..., in) float32 or float64, qweight (out, row_bytes) uint8 blocks -> (..., out)

It is ``x @ W.T + bias`` with W the float32 matrix the blocks decode to,
computed in x's dtype, and the exact answer the fast backends are held to.
W is decoded a slab of rows at a time and thrown away, so no float copy of
the whole matrix outlives (or, for a large one, even exists during) a call.
The arguments are plain arrays and a type name, so this is the numpy
backend's ``quantized_linear_forward`` as it stands.
"""

from __future__ import annotations

import numpy as np

from .formats import block_format, dequantize

OP = "quantized_linear_forward"
_SLAB_VALUES = 1 << 22  # decoded weights per slab: 16 MB of float32
CHUNK = 32  # activations are quantized per 32 values


def int8_activations(x, xp=np):
    """x (rows, in) as the int8 mode of the op sees it: each chunk of 32 values of a
    row rounded to ``d * q`` with ``d = max|x| / 127`` and ``q = round(x / d)`` an
    int8 in [-127, 127] (llama.cpp's q8_0; halves round away from zero; computed in
    x's dtype, as the Rust kernel does in float32). Rows holding NaN or inf stay as
    they are (the kernel multiplies those in floats, so that they propagate).

    The op's int8 result is the exact product of this with the decoded weights, up
    to summation order: per chunk ``sum(w * d q) = d * sum(w q)``, which the kernel
    forms from integer sums. Its distance from the float product is at most
    ``sum over chunks of d / 2 * sum |w|``."""
    rows, n = x.shape
    if n % CHUNK:
        raise ValueError(f"{OP}: int8 activations need in_features a multiple of {CHUNK}, got {n}")
    xc = x.reshape(rows, n // CHUNK, CHUNK)
    amax = xp.abs(xc).max(axis=-1, keepdims=True)
    d = amax / x.dtype.type(127)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inv = xp.where(d > 0, x.dtype.type(1) / xp.where(d > 0, d, 1), 0).astype(x.dtype)
        r = (xc * inv).astype(np.float64)
        q = xp.minimum(xp.maximum(xp.trunc(r + xp.copysign(0.5, r)), -127), 127)
    q = xp.where(xp.isnan(q), 0, q).astype(x.dtype)  # 0 * inf where d is subnormal
    xt = (d * q).reshape(rows, n)
    finite = xp.isfinite(x).all(axis=1, keepdims=True)
    return xp.where(finite, xt, x)


def quantized_linear_forward(x, qweight, qtype, bias=None):
    """x (..., in) float; qweight (out, row_bytes) uint8, each row in_features /
    block_size blocks of ``qtype``; bias (out,) of x's dtype -> (..., out) of x's dtype."""
    fmt = block_format(qtype)
    for name, a in (("x", x), ("qweight", qweight)) + (
        (("bias", bias),) if bias is not None else ()
    ):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{OP}: {name} must be a numpy.ndarray, got {type(a).__name__}")
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(
            f"{OP}: x has dtype {x.dtype}, but the reference computes in float32, "
            f"float64; cast it with .astype(...)"
        )
    if qweight.dtype != np.uint8:
        raise TypeError(
            f"{OP}: qweight holds raw {fmt.name} blocks and must be uint8, got {qweight.dtype}"
        )
    if bias is not None and bias.dtype != x.dtype:
        raise TypeError(f"{OP}: bias has dtype {bias.dtype} but x is {x.dtype}")
    if qweight.ndim != 2 or qweight.shape[1] % fmt.type_size:
        raise ValueError(
            f"{OP}: qweight must be (out, row_bytes) with rows of whole {fmt.name} "
            f"blocks ({fmt.type_size} bytes each) (got qweight {qweight.shape})"
        )
    out_f = qweight.shape[0]
    in_f = qweight.shape[1] // fmt.type_size * fmt.block_size
    if x.ndim == 0 or x.shape[-1] != in_f or (bias is not None and bias.shape != (out_f,)):
        raise ValueError(
            f"{OP}: x (..., in) must end in in_features {in_f} of the {fmt.name} weight "
            f"({out_f}, {in_f}), bias must be ({out_f},) (got x {x.shape}, qweight "
            f"{qweight.shape}, bias {None if bias is None else bias.shape})"
        )
    x2 = x.reshape(-1, in_f)
    y = np.empty((x2.shape[0], out_f), x.dtype)
    rows = max(1, _SLAB_VALUES // max(in_f, 1))
    for r in range(0, out_f, rows):
        w = dequantize(qweight[r : r + rows], fmt).astype(x.dtype, copy=False)
        np.matmul(x2, w.T, out=y[:, r : r + rows])
    if bias is not None:
        y += bias
    return y.reshape(*x.shape[:-1], out_f)
