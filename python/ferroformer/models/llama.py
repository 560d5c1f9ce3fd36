"""``Llama``: a decoder-only transformer in the LLaMA layout: RoPE on queries and
keys, RMSNorm pre-norm, SwiGLU feed-forward, grouped-query attention, no biases,
an untied output head (tie with ``tie_embeddings=True``).

    model = Llama(vocab_size=256, d_model=64, n_heads=4, n_kv_heads=2, n_layers=2, rng=0)
    logits = model(input_ids)              # (B, T) -> (B, T, V)
    model.backward(dlogits)

Parameters (V vocab_size, C d_model, H n_heads, K n_kv_heads, D = C / H,
F d_ff (default: 8C/3 rounded up to a multiple of 32), L n_layers, i < L):
  tok_emb.weight             (V, C)
  blocks.i.ln1.weight        (C,)            RMSNorm before attention
  blocks.i.attn.qkv.weight   ((H + 2K) D, C) rows [q | k | v]
  blocks.i.attn.proj.weight  (C, H D)
  blocks.i.ln2.weight        (C,)            RMSNorm before the feed-forward
  blocks.i.ff.fc1.weight     (2F, C)         rows [gate | up]
  blocks.i.ff.fc2.weight     (C, F)          the down projection
  norm.weight                (C,)
  lm_head.weight             (V, C)          absent when tie_embeddings

The defaults of the layer factories (``linear=``, ``ff=``, ``mixer=``, see
models/_factories.py) give this layout; a tied head is the token embedding's
matrix, a plain ``Linear``.
"""

from __future__ import annotations

import numpy as np

from ..nn import (
    DecoderBlock,
    Embedding,
    Linear,
    RMSNorm,
    RotaryEmbedding,
    make_feed_forward,
    make_linear,
    make_self_attention,
)
from .base import CausalLM, Model, backward_stack, block_stack, init_gpt_style


class Llama(CausalLM, Model):
    def __init__(
        self,
        vocab_size: int,
        max_seq_len: int = 2048,
        d_model: int = 512,
        n_heads: int = 8,
        n_kv_heads=None,
        n_layers: int = 8,
        d_ff=None,
        rope_base: float = 10000.0,
        norm_eps: float = 1e-6,
        tie_embeddings: bool = False,
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
        if d_ff is None:
            d_ff = -(-(8 * d_model // 3) // 32) * 32
        self.tok_emb = Embedding(vocab_size, d_model, rng=rng, dtype=dtype)
        self.rope = RotaryEmbedding(d_model // n_heads, max_seq_len, rope_base, dtype=dtype)
        self.blocks = block_stack(
            DecoderBlock,
            n_layers,
            "blocks",
            d_model,
            n_heads,
            d_ff,
            cross_attention=False,
            n_kv_heads=n_kv_heads,
            norm="rms",
            norm_eps=norm_eps,
            activation="swiglu",
            bias=False,
            rope=self.rope,
            checkpoint=checkpoint,
            **layers,
        )
        self.norm = RMSNorm(d_model, norm_eps, dtype=dtype)
        if tie_embeddings:  # drawn like an untied head, so that the rest of the weights agree
            self.lm_head = Linear(d_model, vocab_size, bias=False, rng=rng, dtype=dtype)
            self.lm_head.weight = self.tok_emb.weight
        else:
            self.lm_head = linear(d_model, vocab_size, False, rng=rng, dtype=dtype, name="lm_head")
        init_gpt_style(self, n_layers, rng)
        self._finish()

    def forward(self, input_ids, offset: int = 0, cache=None, last_only: bool = False):
        """input_ids (B, T) int; offset: position of the first token -> logits (B, T, V).
        cache: a ``KVCache`` from ``new_cache`` (decoding; offset then comes from it);
        last_only: logits of the last position only, (B, 1, V)."""
        if cache is not None:
            offset = cache.length  # RoPE takes each row's positions from the cache
        x = self._run_blocks(self.tok_emb(input_ids), offset, cache, last_only)
        return self.lm_head(self.norm(x))

    def backward(self, dlogits):
        self.tok_emb.backward(
            backward_stack(self.blocks, self.norm.backward(self.lm_head.backward(dlogits)))
        )
