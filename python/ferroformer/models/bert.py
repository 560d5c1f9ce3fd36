"""``BERT``: a bidirectional encoder with a masked-language-model head (BERT's layout:
token + position (+ segment) embeddings, LayerNorm, post-norm GELU blocks; the
head is dense + GELU + LayerNorm + a decoder tied to the token embedding).

    model = BERT(vocab_size=256, d_model=64, n_heads=4, n_layers=2, rng=0)
    logits = model(input_ids, key_padding_mask=pad)   # (B, T) -> (B, T, V); pad (B, T) True = padding
    model.backward(dlogits)

Parameters (V vocab_size, C d_model, F d_ff (default 4C), S n_segments, L n_layers, i < L):
  tok_emb.weight             (V, C)         also the MLM decoder's weight
  pos_emb.weight             (max_seq_len, C)
  seg_emb.weight             (S, C)         absent when n_segments == 0
  emb_ln.weight, .bias       (C,)
  blocks.i.attn.qkv.weight   (3C, C); .bias (3C,)
  blocks.i.attn.proj.weight  (C, C);  .bias (C,)
  blocks.i.ln1.weight, .bias (C,)       after attention (post-norm)
  blocks.i.ff.fc1.weight     (F, C);  .bias (F,)
  blocks.i.ff.fc2.weight     (C, F);  .bias (C,)
  blocks.i.ln2.weight, .bias (C,)       after the feed-forward
  head_dense.weight          (C, C);  .bias (C,)
  head_ln.weight, .bias      (C,)
  decoder.bias               (V,)

The defaults of the layer factories (``linear=``, ``ff=``, ``mixer=``, see
models/_factories.py) give this layout; the decoder is the token embedding's
matrix, a plain ``Linear``.
"""

from __future__ import annotations

import numpy as np

from ..nn import (
    Dropout,
    Embedding,
    EncoderBlock,
    LayerNorm,
    LearnedPositionalEmbedding,
    make_feed_forward,
    make_linear,
    make_self_attention,
)
from .base import Model, backward_stack, block_stack, init_gpt_style, tied_head


class BERT(Model):
    def __init__(
        self,
        vocab_size: int,
        max_seq_len: int = 512,
        d_model: int = 768,
        n_heads: int = 12,
        n_layers: int = 12,
        d_ff=None,
        n_segments: int = 2,
        dropout: float = 0.1,
        checkpoint: bool = False,
        norm_eps: float = 1e-12,
        gelu_approximate: str = "tanh",
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
        self.tok_emb = Embedding(vocab_size, d_model, rng=rng, dtype=dtype)
        self.pos_emb = LearnedPositionalEmbedding(max_seq_len, d_model, rng=rng, dtype=dtype)
        self.seg_emb = Embedding(n_segments, d_model, rng=rng, dtype=dtype) if n_segments else None
        self.emb_ln = LayerNorm(d_model, norm_eps, dtype=dtype)
        self.emb_drop = Dropout(dropout, rng=int(rng.integers(2**63)))
        self.blocks = block_stack(
            EncoderBlock,
            n_layers,
            "blocks",
            d_model,
            n_heads,
            d_ff,
            dropout=dropout,
            norm_first=False,
            norm_eps=norm_eps,
            activation="gelu",
            gelu_approximate=gelu_approximate,
            checkpoint=checkpoint,
            **layers,
        )
        self.head_dense = linear(d_model, d_model, True, rng=rng, dtype=dtype, name="head_dense")
        self.head_ln = LayerNorm(d_model, norm_eps, dtype=dtype)
        self.decoder = tied_head(self.tok_emb, True, dtype)
        self.gelu_approximate = gelu_approximate
        init_gpt_style(self, n_layers, rng, residual_names=())
        self._finish()

    def forward(self, input_ids, segment_ids=None, key_padding_mask=None):
        """input_ids (B, T) int; segment_ids (B, T) int (zeros when None);
        key_padding_mask (B, T) bool, True = padding -> logits (B, T, V)."""
        x = self.encode(input_ids, segment_ids, key_padding_mask)
        h = self.head_dense(x)
        a = self.ops.gelu_forward(h, approximate=self.gelu_approximate)
        if self.training:
            self.cache = h
        return self.decoder(self.head_ln(a))

    def encode(self, input_ids, segment_ids=None, key_padding_mask=None):
        """The encoder's last hidden states (B, T, C), without the MLM head."""
        x = self.pos_emb(self.tok_emb(input_ids))
        if self.seg_emb is not None:
            seg = self.ops.xp.zeros_like(input_ids) if segment_ids is None else segment_ids
            x += self.seg_emb(seg)
        x = self.emb_drop(self.emb_ln(x))
        for blk in self.blocks:
            x = blk(x, key_padding_mask=key_padding_mask)
        return x

    def backward(self, dlogits):
        h = self.take_cache()
        da = self.head_ln.backward(self.decoder.backward(dlogits))
        dx = self.head_dense.backward(
            self.ops.gelu_backward(da, h, approximate=self.gelu_approximate)
        )
        dx = self.emb_ln.backward(self.emb_drop.backward(backward_stack(self.blocks, dx)))
        if self.seg_emb is not None:
            self.seg_emb.backward(dx)
        self.tok_emb.backward(self.pos_emb.backward(dx))
