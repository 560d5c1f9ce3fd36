"""``GPT``: a decoder-only transformer (GPT-2 layout): learned positions,
pre-norm blocks with GELU, a final LayerNorm and an output head tied to the
token embedding.

    model = GPT(vocab_size=256, max_seq_len=256, d_model=384, n_heads=6, n_layers=6, rng=0)
    logits = model(input_ids)              # input_ids (B, T) int -> (B, T, vocab_size)
    model.backward(dlogits)                # adds into every param.grad

Parameters (V vocab_size, C d_model, F d_ff (default 4 C), L n_layers, i < L):
  wte.weight                 (V, C)      token embedding; also the output head
  wpe.weight                 (max_seq_len, C)
  blocks.i.ln1.weight, .bias (C,)
  blocks.i.attn.qkv.weight   (3C, C)     rows [q | k | v];  .bias (3C,)
  blocks.i.attn.proj.weight  (C, C);     .bias (C,)
  blocks.i.ln2.weight, .bias (C,)
  blocks.i.ff.fc1.weight     (F, C);     .bias (F,)
  blocks.i.ff.fc2.weight     (C, F);     .bias (C,)
  ln_f.weight, .bias         (C,)

The defaults of the layer factories (``linear=``, ``ff=``, ``mixer=``, see
models/_factories.py) give this layout; the head is the token embedding's
matrix, a plain ``Linear``.
"""

from __future__ import annotations

import numpy as np

from ..nn import (
    DecoderBlock,
    Dropout,
    Embedding,
    LayerNorm,
    LearnedPositionalEmbedding,
    make_feed_forward,
    make_linear,
    make_self_attention,
)
from .base import CausalLM, Model, backward_stack, block_stack, init_gpt_style, tied_head


class GPT(CausalLM, Model):
    def __init__(
        self,
        vocab_size: int,
        max_seq_len: int = 1024,
        d_model: int = 768,
        n_heads: int = 12,
        n_layers: int = 12,
        d_ff=None,
        dropout: float = 0.0,
        bias: bool = True,
        checkpoint: bool = False,
        *,
        linear=make_linear,
        ff=make_feed_forward,
        mixer=make_self_attention,
        backend=None,
        dtype=np.float32,
        rng=None,
    ):
        super().__init__()
        rng, layers = self._setup(dict(locals()))
        d_ff = 4 * d_model if d_ff is None else d_ff
        self.wte = Embedding(vocab_size, d_model, rng=rng, dtype=dtype)
        self.wpe = LearnedPositionalEmbedding(max_seq_len, d_model, rng=rng, dtype=dtype)
        self.drop = Dropout(dropout, rng=int(rng.integers(2**63)))
        self.blocks = block_stack(
            DecoderBlock,
            n_layers,
            "blocks",
            d_model,
            n_heads,
            d_ff,
            cross_attention=False,
            dropout=dropout,
            activation="gelu",
            bias=bias,
            checkpoint=checkpoint,
            **layers,
        )
        self.ln_f = LayerNorm(d_model, dtype=dtype)
        self.head = tied_head(self.wte, False, dtype)
        init_gpt_style(self, n_layers, rng)
        self._finish()

    def forward(self, input_ids, offset: int = 0, cache=None, last_only: bool = False):
        """input_ids (B, T) int; offset: position of the first token -> logits (B, T, V).
        cache: a ``KVCache`` from ``new_cache`` (decoding; offset then comes from it);
        last_only: logits of the last position only, (B, 1, V)."""
        positions = None
        if cache is not None:
            offset, positions = cache.length, cache.positions(input_ids.shape[1])
        x = self.drop(self.wpe(self.wte(input_ids), offset, positions=positions))
        x = self._run_blocks(x, offset, cache, last_only)
        return self.head(self.ln_f(x))

    def backward(self, dlogits):
        dx = backward_stack(self.blocks, self.ln_f.backward(self.head.backward(dlogits)))
        self.wte.backward(self.wpe.backward(self.drop.backward(dx)))
