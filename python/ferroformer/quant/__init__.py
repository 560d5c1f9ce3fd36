"""Quantized weights in GGUF's own block formats.

    from ferroformer.quant import quantize_model, load_gguf
    quantize_model(model, "Q8_0")                 # nn.Linear -> QuantizedLinear, in place
    model, tok = load_gguf("model.Q4_K_M.gguf")   # a Llama over the file's memory-mapped blocks

formats.py     the block layouts and their NumPy dequantizers (F32 ... Q6_K)
quantize.py    float -> blocks (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 via gguf; Q4_K, Q6_K here)
tensor.py      QuantizedTensor: raw blocks + type + logical (out, in) shape
reference.py   quantized_linear_forward, the NumPy reference of the product
layers.py      QuantizedLinear, QuantizedEmbedding, quantize_model
gguf_file.py   load_gguf: Llama (and GPT-2) models straight from a GGUF file
gguf_write.py  save_gguf: GPT and Llama models, float or quantized, as GGUF files
"""

from .formats import FORMATS, BlockFormat, block_format, dequantize
from .gguf_file import load_gguf
from .gguf_write import save_gguf
from .layers import QuantizedEmbedding, QuantizedLinear, quantize_model, set_activations
from .quantize import QUANTIZERS, quantize
from .reference import quantized_linear_forward
from .tensor import QuantizedTensor

__all__ = [
    "FORMATS",
    "QUANTIZERS",
    "BlockFormat",
    "QuantizedEmbedding",
    "QuantizedLinear",
    "QuantizedTensor",
    "block_format",
    "dequantize",
    "load_gguf",
    "quantize",
    "quantize_model",
    "quantized_linear_forward",
    "save_gguf",
    "set_activations",
]
