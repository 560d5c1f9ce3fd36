"""Quantized weights in GGUF's own block formats.

formats.py     the block layouts and their NumPy dequantizers (F32 ... Q6_K)
quantize.py    float -> blocks (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 via gguf; Q4_K, Q6_K here)
tensor.py      QuantizedTensor: raw blocks + type + logical (out, in) shape
reference.py   quantized_linear_forward, the NumPy reference of the product
"""

from .formats import FORMATS, BlockFormat, block_format, dequantize
from .quantize import QUANTIZERS, quantize
from .reference import quantized_linear_forward
from .tensor import QuantizedTensor

__all__ = [
    "FORMATS", "QUANTIZERS", "BlockFormat", "QuantizedTensor", "block_format", "dequantize",
    "quantize", "quantized_linear_forward",
]
