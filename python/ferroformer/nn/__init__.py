"""Layers with explicit forward and backward passes (no autograd tape).

Each module computes with its backend's ops (``self.ops``); ``Module.to(name)``
moves it. See ``module.py`` for the conventions, and ``blocks.py`` for the
factories (``linear=``, ``ff=``, ``mixer=``) through which blocks and models
build their layers.
"""

from . import init
from .attention import (
    AttentionState,
    CrossAttentionState,
    MultiHeadAttention,
    make_self_attention,
)
from .blocks import DecoderBlock, EncoderBlock, TransformerBlock
from .dropout import Dropout
from .embedding import Embedding
from .feedforward import FeedForward, make_feed_forward
from .linear import Linear, make_linear, scoped
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
    "AttentionState",
    "CrossAttentionState",
    "DecoderBlock",
    "Dropout",
    "Embedding",
    "EncoderBlock",
    "FeedForward",
    "LayerNorm",
    "LearnedPositionalEmbedding",
    "Linear",
    "Module",
    "ModuleList",
    "MultiHeadAttention",
    "Parameter",
    "QuantizedEmbedding",
    "QuantizedLinear",
    "RMSNorm",
    "RotaryEmbedding",
    "SinusoidalPositionalEncoding",
    "TransformerBlock",
    "alibi_bias",
    "alibi_slopes",
    "init",
    "make_feed_forward",
    "make_linear",
    "make_self_attention",
    "rope_tables",
    "scoped",
    "sinusoidal_table",
]


def __getattr__(name):
    # the quantized layers live in ferroformer.quant (which imports the models, which
    # import nn): loaded on first use
    if name in ("QuantizedLinear", "QuantizedEmbedding"):
        from ..quant import layers

        return getattr(layers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
