"""Layers with explicit forward and backward passes (no autograd tape).

Each module computes with its backend's ops (``self.ops``); ``Module.to(name)``
moves it. See ``module.py`` for the conventions.
"""

from . import init
from .attention import MultiHeadAttention
from .blocks import DecoderBlock, EncoderBlock, TransformerBlock
from .dropout import Dropout
from .embedding import Embedding
from .feedforward import FeedForward
from .linear import Linear
from .module import Module, ModuleList, Parameter
from .norm import LayerNorm, RMSNorm
from .positional import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    alibi_bias,
    alibi_slopes,
    rope_tables,
    sinusoidal_table,
)

__all__ = [
    "DecoderBlock", "Dropout", "Embedding", "EncoderBlock", "FeedForward", "LayerNorm",
    "LearnedPositionalEmbedding", "Linear", "Module", "ModuleList", "MultiHeadAttention",
    "Parameter", "RMSNorm", "RotaryEmbedding", "SinusoidalPositionalEncoding", "TransformerBlock",
    "alibi_bias", "alibi_slopes", "init", "rope_tables", "sinusoidal_table",
]
