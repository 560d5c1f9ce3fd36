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


def quantized_linear_forward(x, qweight, qtype, bias=None):
    """x (..., in) float; qweight (out, row_bytes) uint8, each row in_features /
    block_size blocks of ``qtype``; bias (out,) of x's dtype -> (..., out) of x's dtype."""
    fmt = block_format(qtype)
    for name, a in (("x", x), ("qweight", qweight)) + ((("bias", bias),) if bias is not None else ()):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{OP}: {name} must be a numpy.ndarray, got {type(a).__name__}")
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{OP}: x has dtype {x.dtype}, but the reference computes in float32, "
                        f"float64; cast it with .astype(...)")
    if qweight.dtype != np.uint8:
        raise TypeError(f"{OP}: qweight holds raw {fmt.name} blocks and must be uint8, "
                        f"got {qweight.dtype}")
    if bias is not None and bias.dtype != x.dtype:
        raise TypeError(f"{OP}: bias has dtype {bias.dtype} but x is {x.dtype}")
    if qweight.ndim != 2 or qweight.shape[1] % fmt.type_size:
        raise ValueError(f"{OP}: qweight must be (out, row_bytes) with rows of whole {fmt.name} "
                         f"blocks ({fmt.type_size} bytes each) (got qweight {qweight.shape})")
    out_f = qweight.shape[0]
    in_f = qweight.shape[1] // fmt.type_size * fmt.block_size
    if x.ndim == 0 or x.shape[-1] != in_f or (bias is not None and bias.shape != (out_f,)):
        raise ValueError(
            f"{OP}: x (..., in) must end in in_features {in_f} of the {fmt.name} weight "
            f"({out_f}, {in_f}), bias must be ({out_f},) (got x {x.shape}, qweight "
            f"{qweight.shape}, bias {None if bias is None else bias.shape})")
    x2 = x.reshape(-1, in_f)
    y = np.empty((x2.shape[0], out_f), x.dtype)
    rows = max(1, _SLAB_VALUES // max(in_f, 1))
    for r in range(0, out_f, rows):
        w = dequantize(qweight[r:r + rows], fmt).astype(x.dtype, copy=False)
        np.matmul(x2, w.T, out=y[:, r:r + rows])
    if bias is not None:
        y += bias
    return y.reshape(*x.shape[:-1], out_f)
