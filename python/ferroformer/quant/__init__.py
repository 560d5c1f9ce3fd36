"""Quantized weights in GGUF's own block formats.

formats.py     the block layouts and their NumPy dequantizers (F32 ... Q6_K)
quantize.py    float -> blocks (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 via gguf; Q4_K, Q6_K here)
"""

from .formats import FORMATS, BlockFormat, block_format, dequantize
from .quantize import QUANTIZERS, quantize

__all__ = ["FORMATS", "QUANTIZERS", "BlockFormat", "block_format", "dequantize", "quantize"]
