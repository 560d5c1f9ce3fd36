"""``QuantizedTensor``: a weight matrix kept in its GGUF blocks.

    qw = QuantizedTensor(raw, "Q4_K", (out_features, in_features))
    qw.data             # (out_features, row_bytes) uint8: the bytes as given (a view of a
                        # memory-mapped file stays one; nothing is decoded)
    qw.dequantize()     # (out_features, in_features) float32, only when asked

Each of the ``out_features`` rows is in_features / block_size blocks, so
``in_features`` must be a multiple of the format's block size and ``raw`` must
hold exactly ``out_features * row_bytes`` bytes (ValueError otherwise).
"""

from __future__ import annotations

import numpy as np

from .formats import BlockFormat, block_format, dequantize


class QuantizedTensor:
    """Raw blocks ``data`` (out, row_bytes) uint8, their ``qtype`` name and the logical
    ``shape`` (out_features, in_features) they decode to."""

    __slots__ = ("data", "format", "qtype", "shape")

    def __init__(self, data, qtype, shape):
        fmt: BlockFormat = block_format(qtype)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
            raise TypeError(
                f"QuantizedTensor: data must be a uint8 numpy array of raw blocks, "
                f"got {getattr(data, 'dtype', type(data).__name__)}"
            )
        if len(shape) != 2 or any(
            isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0 for n in shape
        ):
            raise ValueError(
                f"QuantizedTensor: shape must be (out_features, in_features) of "
                f"positive ints, got {tuple(shape)}"
            )
        out_f, in_f = int(shape[0]), int(shape[1])
        if in_f % fmt.block_size:
            raise ValueError(
                f"QuantizedTensor: in_features {in_f} is not a multiple of the "
                f"{fmt.name} block size {fmt.block_size}"
            )
        row_bytes = fmt.row_bytes(in_f)
        if data.size != out_f * row_bytes:
            raise ValueError(
                f"QuantizedTensor: a {fmt.name} matrix ({out_f}, {in_f}) takes "
                f"{out_f * row_bytes} bytes ({out_f} rows of {row_bytes}), "
                f"got {data.size} bytes {data.shape}"
            )
        # a view when data is contiguous (a memory map stays one); else one copy of the bytes
        self.data = data.reshape(out_f, row_bytes)
        self.qtype, self.shape, self.format = fmt.name, (out_f, in_f), fmt

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def dequantize(self, dtype=np.float32) -> np.ndarray:
        """The (out_features, in_features) matrix as floats (a new array)."""
        return dequantize(self.data, self.format).astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"QuantizedTensor({self.qtype}, shape={self.shape}, nbytes={self.nbytes})"
