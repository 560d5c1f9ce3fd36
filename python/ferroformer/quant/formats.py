"""GGUF's block formats: what a block holds and how it decodes to float32.

    fmt = block_format("Q4_K")          # BlockFormat(name="Q4_K", block_size=256, type_size=144)
    w = dequantize(raw, "Q4_K")         # raw (rows, row_bytes) uint8 -> (rows, row_bytes // 144 * 256)

A tensor row of n values is n / block_size blocks of type_size bytes each,
stored one after another; a matrix (out, in) is out such rows. Every
dequantizer below works on all blocks of an array at once: ``blocks`` is
(n_blocks, type_size) uint8, the result (n_blocks, block_size) float32. The
layouts are llama.cpp's (ggml-common.h; all multi-byte fields little-endian,
``f16`` an IEEE half):

  F32, F16, BF16  1 value per "block"
  Q8_0   (32, 34)   d f16 | qs int8[32]                      x = d q
  Q4_0   (32, 18)   d f16 | qs[16]   low nibbles are values 0..15,
                                     high nibbles 16..31     x = d (q - 8)
  Q4_1   (32, 20)   d f16 | m f16 | qs[16]                   x = d q + m
  Q5_0   (32, 22)   d f16 | qh u32 | qs[16]  bit j of qh is the fifth bit of value j
                                                             x = d (q - 16)
  Q5_1   (32, 24)   d f16 | m f16 | qh u32 | qs[16]          x = d q + m
  Q4_K   (256, 144) d f16 | dmin f16 | scales[12] | qs[128]
         8 sub-blocks of 32 with 6-bit scale sc and min m (packed, see _k4_scales);
         qs[32c:32c+32] hold sub-block 2c in low nibbles, 2c+1 in high nibbles
                                                             x = (d sc) q - dmin m
  Q5_K   (256, 176) d f16 | dmin f16 | scales[12] | qh[32] | qs[128]
         as Q4_K, with bit 2c (2c+1) of qh[l] the fifth bit of sub-block 2c (2c+1)
  Q6_K   (256, 210) ql[128] | qh[64] | scales int8[16] | d f16
         16 sub-blocks of 16, each with an int8 scale;      x = (d sc) (q - 32)
         each half h of 128 values: ql[64h:64h+64] low nibbles, qh[32h:32h+32] 2-bit highs

The arithmetic is float32 in llama.cpp's order (``(d * sc) * q - dmin * m``),
so the values are bit-identical to llama.cpp's ``dequantize_row_*`` and to the
``gguf`` package's ``gguf.quants.dequantize``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import numpy as np

_F16 = np.dtype("<f2")
_U32 = np.dtype("<u4")


@dataclass(frozen=True)
class BlockFormat:
    """One GGUF tensor type: ``block_size`` values in ``type_size`` bytes.

    ``ggml_type`` is the type's number in GGUF files; ``half_offsets`` the byte
    offsets of the block's f16 scale fields (d, m, dmin) within a block."""

    name: str
    ggml_type: int
    block_size: int
    type_size: int
    half_offsets: Tuple[int, ...]
    dequantize_blocks: Callable[[np.ndarray], np.ndarray]

    def row_bytes(self, n: int) -> int:
        """Bytes of a row of ``n`` values (n a multiple of block_size)."""
        return n // self.block_size * self.type_size


def _half(blocks: np.ndarray, at: int) -> np.ndarray:
    """The f16 field at byte ``at`` of every block, as a (n, 1) float32 column."""
    return blocks[:, at : at + 2].copy().view(_F16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """qs (n, 16) -> (n, 32) uint8: the low nibbles, then the high nibbles."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _fifth_bits(qh_bytes: np.ndarray) -> np.ndarray:
    """qh (n, 4) bytes of a little-endian u32 -> (n, 32) uint8: bit j of it times 16."""
    qh = qh_bytes.copy().view(_U32)  # (n, 1)
    return (((qh >> np.arange(32, dtype=np.uint32)) & 1) << 4).astype(np.uint8)


# -- float types -------------------------------------------------------------------
def _f32(blocks):
    return blocks.copy().view("<f4").astype(np.float32, copy=False)


def _f16(blocks):
    return blocks.copy().view(_F16).astype(np.float32)


def _bf16(blocks):
    # bfloat16 is the high half of a float32
    return (blocks.copy().view("<u2").astype(np.uint32) << 16).view(np.float32)


# -- 32-value blocks ---------------------------------------------------------------
def _q8_0(blocks):
    d = _half(blocks, 0)
    return d * blocks[:, 2:].view(np.int8).astype(np.float32)


def _q4_0(blocks):
    d = _half(blocks, 0)
    q = _nibbles(blocks[:, 2:]).astype(np.int8) - np.int8(8)
    return q.astype(np.float32) * d


def _q4_1(blocks):
    d, m = _half(blocks, 0), _half(blocks, 2)
    return _nibbles(blocks[:, 4:]).astype(np.float32) * d + m


def _q5_0(blocks):
    d = _half(blocks, 0)
    q = (_nibbles(blocks[:, 6:]) | _fifth_bits(blocks[:, 2:6])).astype(np.int8) - np.int8(16)
    return q.astype(np.float32) * d


def _q5_1(blocks):
    d, m = _half(blocks, 0), _half(blocks, 2)
    q = _nibbles(blocks[:, 8:]) | _fifth_bits(blocks[:, 4:8])
    return q.astype(np.float32) * d + m


# -- 256-value super-blocks --------------------------------------------------------
def _k4_scales(s: np.ndarray):
    """The 12 packed scale bytes of Q4_K / Q5_K -> (sc, m), each (n, 8) uint8 in 0..63
    (llama.cpp's get_scale_min_k4): sub-blocks 0-3 keep 6 bits in bytes 0-3 (scale) and
    4-7 (min); sub-blocks 4-7 keep their low 4 bits in bytes 8-11 and their top 2 bits
    in the top bits of bytes 0-3 (scale) and 4-7 (min)."""
    lo, mid, hi = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = np.concatenate([lo & 63, (hi & 0x0F) | ((lo >> 6) << 4)], axis=1)
    m = np.concatenate([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], axis=1)
    return sc, m


def _k4_values(qs: np.ndarray) -> np.ndarray:
    """qs (n, 128) -> (n, 8, 32) uint8: sub-block 2c in the low nibbles of
    qs[32c:32c+32], sub-block 2c+1 in their high nibbles."""
    q = qs.reshape(-1, 4, 1, 32)
    return np.concatenate([q & 0x0F, q >> 4], axis=2).reshape(-1, 8, 32)


def _k4_combine(blocks, q):
    """x = (d sc) q - dmin m for q (n, 8, 32) -> (n, 256) float32."""
    d, dmin = _half(blocks, 0), _half(blocks, 2)
    sc, m = _k4_scales(blocks[:, 4:16])
    scale = (d * sc.astype(np.float32))[:, :, None]
    offset = (dmin * m.astype(np.float32))[:, :, None]
    return (scale * q.astype(np.float32) - offset).reshape(-1, 256)


def _q4_k(blocks):
    return _k4_combine(blocks, _k4_values(blocks[:, 16:144]))


def _q5_k(blocks):
    q = _k4_values(blocks[:, 48:176])
    qh = blocks[:, 16:48]  # (n, 32): bit j of qh[l] is the fifth bit of value l of sub-block j
    high = ((qh[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1) << 4
    return _k4_combine(blocks, q | high)


def _q6_k(blocks):
    ql = blocks[:, 0:128].reshape(-1, 2, 2, 32)  # (half, pair of 32 bytes, l)
    qh = blocks[:, 128:192].reshape(-1, 2, 1, 32)
    sc = blocks[:, 192:208].view(np.int8).astype(np.float32).reshape(-1, 16, 1)
    d = _half(blocks, 208)[:, :, None]
    # values of a half, in groups of 32: ql[0:32] low, ql[32:64] low, ql[0:32] high,
    # ql[32:64] high; the high 2 bits are qh's bit pairs 0, 1, 2, 3 in that order
    low = np.concatenate([ql & 0x0F, ql >> 4], axis=2)  # (n, 2, 4, 32)
    shifts = np.arange(0, 8, 2, dtype=np.uint8)[None, None, :, None]
    high = ((qh >> shifts) & 3) << 4
    q = ((low | high).astype(np.int8) - np.int8(32)).astype(np.float32).reshape(-1, 16, 16)
    return ((d * sc) * q).reshape(-1, 256)


FORMATS: Dict[str, BlockFormat] = {
    f.name: f
    for f in (
        BlockFormat("F32", 0, 1, 4, (), _f32),
        BlockFormat("F16", 1, 1, 2, (), _f16),
        BlockFormat("BF16", 30, 1, 2, (), _bf16),
        BlockFormat("Q4_0", 2, 32, 18, (0,), _q4_0),
        BlockFormat("Q4_1", 3, 32, 20, (0, 2), _q4_1),
        BlockFormat("Q5_0", 6, 32, 22, (0,), _q5_0),
        BlockFormat("Q5_1", 7, 32, 24, (0, 2), _q5_1),
        BlockFormat("Q8_0", 8, 32, 34, (0,), _q8_0),
        BlockFormat("Q4_K", 12, 256, 144, (0, 2), _q4_k),
        BlockFormat("Q5_K", 13, 256, 176, (0, 2), _q5_k),
        BlockFormat("Q6_K", 14, 256, 210, (208,), _q6_k),
    )
}
_BY_TYPE = {f.ggml_type: f for f in FORMATS.values()}


def _type_name(qtype) -> str:
    """A readable name for a GGML type given as a number (gguf's enum knows them all)."""
    try:
        import gguf

        return gguf.GGMLQuantizationType(int(qtype)).name
    except (ImportError, ValueError):
        return f"number {int(qtype)}"


def block_format(qtype) -> BlockFormat:
    """The format of ``qtype``: a name ("Q4_K", "q4_k"), a ``gguf.GGMLQuantizationType``
    or its number. A type ferroformer does not decode is a ValueError naming it."""
    if isinstance(qtype, BlockFormat):
        return qtype
    if isinstance(qtype, str):
        name = qtype.upper()
        found = FORMATS.get(name)
    elif isinstance(qtype, (int, np.integer)) and not isinstance(qtype, bool):
        name = getattr(qtype, "name", None) or _type_name(qtype)
        found = _BY_TYPE.get(int(qtype))
    else:
        raise TypeError(
            f"quantized type must be a name or a GGML type number, got {type(qtype).__name__}"
        )
    if found is None:
        raise ValueError(f"quantized type {name} is not supported; supported: {', '.join(FORMATS)}")
    return found


def dequantize(data: np.ndarray, qtype) -> np.ndarray:
    """Raw blocks -> float32: ``data`` (..., row_bytes) uint8 -> (..., row_bytes //
    type_size * block_size). ValueError when row_bytes is not a whole number of blocks."""
    fmt = block_format(qtype)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise TypeError(
            f"dequantize: data must be a uint8 numpy array, got "
            f"{getattr(data, 'dtype', type(data).__name__)}"
        )
    if data.ndim == 0 or data.shape[-1] % fmt.type_size:
        raise ValueError(
            f"dequantize: {fmt.name} rows are whole blocks of {fmt.type_size} "
            f"bytes, got data {data.shape}"
        )
    n_values = data.shape[-1] // fmt.type_size * fmt.block_size
    blocks = np.ascontiguousarray(data).reshape(-1, fmt.type_size)
    return fmt.dequantize_blocks(blocks).reshape(*data.shape[:-1], n_values)
