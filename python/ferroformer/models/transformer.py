"""``Transformer``: the encoder-decoder of "Attention Is All You Need": token
embeddings scaled by sqrt(d_model) plus sinusoidal positions, an encoder of
self-attention blocks, a decoder of causal self-attention + cross-attention
blocks, and a linear output head (tied to the target embedding by default).

    model = Transformer(src_vocab_size=16, tgt_vocab_size=16, d_model=64, n_heads=4,
                        n_encoder_layers=2, n_decoder_layers=2, d_ff=256, dropout=0.0, rng=0)
    logits = model(src, tgt, src_key_padding_mask=pad)   # (B, Ts), (B, Tt) -> (B, Tt, V_tgt)
    model.backward(dlogits)
    memory = model.encode(src, pad); logits = model.decode(tgt, memory, pad)   # for decoding

With ``pad_id`` set, source positions equal to it are masked automatically.
``norm_first=False`` is the paper's post-norm; ``norm_first=True`` adds a final
LayerNorm to the encoder and to the decoder (enc_norm, dec_norm).

Parameters (Vs, Vt vocab sizes, C d_model, F d_ff, Le / Ld layers):
  src_emb.weight (Vs, C); tgt_emb.weight (Vt, C) (the output head too when tied)
  encoder.i.{ln1, attn.qkv (3C, C), attn.proj (C, C), ln2, ff.fc1 (F, C), ff.fc2 (C, F)}
  decoder.i.{ln1, attn.qkv, attn.proj, ln_cross, cross_attn.q (C, C), cross_attn.kv (2C, C),
             cross_attn.proj (C, C), ln2, ff.fc1, ff.fc2}   (each .weight and .bias)
  enc_norm, dec_norm (C,) when norm_first; head.weight (Vt, C) when not tied

The defaults of the layer factories (``linear=``, ``ff=``, ``mixer=``, see
models/_factories.py) give this layout. Factories see the encoder's blocks as
"encoder.i", the decoder's as "decoder.i"; cross-attention stays a
``MultiHeadAttention`` (with projections from ``linear``), and a tied head is the target embedding's matrix, a plain ``Linear``.
"""

from __future__ import annotations

import math

import numpy as np

from ..nn import (
    DecoderBlock,
    Dropout,
    Embedding,
    EncoderBlock,
    LayerNorm,
    SinusoidalPositionalEncoding,
    make_feed_forward,
    make_linear,
    make_self_attention,
)
from .base import Model, backward_stack, block_stack, tied_head


class Transformer(Model):
    def __init__(
        self,
        src_vocab_size: int,
        tgt_vocab_size: int,
        d_model: int = 512,
        n_heads: int = 8,
        n_encoder_layers: int = 6,
        n_decoder_layers: int = 6,
        d_ff: int = 2048,
        dropout: float = 0.1,
        max_seq_len: int = 512,
        norm_first: bool = False,
        activation: str = "relu",
        tie_embeddings: bool = True,
        pad_id=None,
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
        self.pad_id = pad_id
        std = 1.0 / math.sqrt(d_model)  # unit variance after the sqrt(d_model) scale
        self.src_emb = Embedding(src_vocab_size, d_model, scale=True, std=std, rng=rng, dtype=dtype)
        self.tgt_emb = Embedding(tgt_vocab_size, d_model, scale=True, std=std, rng=rng, dtype=dtype)
        self.pe = SinusoidalPositionalEncoding(d_model, max_seq_len, dtype=dtype)
        self.src_drop = Dropout(dropout, rng=int(rng.integers(2**63)))
        self.tgt_drop = Dropout(dropout, rng=int(rng.integers(2**63)))
        kw = dict(
            dropout=dropout,
            norm_first=norm_first,
            activation=activation,
            checkpoint=checkpoint,
            **layers,
        )
        self.encoder = block_stack(
            EncoderBlock, n_encoder_layers, "encoder", d_model, n_heads, d_ff, **kw
        )
        self.decoder = block_stack(
            DecoderBlock, n_decoder_layers, "decoder", d_model, n_heads, d_ff, **kw
        )
        self.enc_norm = LayerNorm(d_model, dtype=dtype) if norm_first else None
        self.dec_norm = LayerNorm(d_model, dtype=dtype) if norm_first else None
        if tie_embeddings:
            self.head = tied_head(self.tgt_emb, False, dtype)
        else:
            self.head = linear(d_model, tgt_vocab_size, False, rng=rng, dtype=dtype, name="head")
        self._finish()

    def source_mask(self, src, src_key_padding_mask=None):
        """The (B, Ts) bool padding mask: the one given, else src == pad_id, else None."""
        if src_key_padding_mask is None and self.pad_id is not None:
            return src == self.pad_id
        return src_key_padding_mask

    def encode(self, src, src_key_padding_mask=None):
        """src (B, Ts) int -> memory (B, Ts, C)."""
        mask = self.source_mask(src, src_key_padding_mask)
        x = self.src_drop(self.pe(self.src_emb(src)))
        for blk in self.encoder:
            x = blk(x, key_padding_mask=mask)
        return x if self.enc_norm is None else self.enc_norm(x)

    def decode(
        self,
        tgt,
        memory,
        src_key_padding_mask=None,
        src=None,
        offset: int = 0,
        cache=None,
        last_only: bool = False,
    ):
        """tgt (B, Tt) int, memory (B, Ts, C) -> logits (B, Tt, Vt). Pass ``src`` (or the
        mask) so that padded source positions stay masked. cache: a ``KVCache`` from
        ``new_cache`` (decoding: tgt holds only the new tokens; the cross-attention keys
        and values of memory are computed on the first call and kept); last_only: logits
        of the last position only."""
        mask = src_key_padding_mask if src is None else self.source_mask(src, src_key_padding_mask)
        if cache is not None:
            offset = cache.length
        y = self.tgt_drop(self.pe(self.tgt_emb(tgt), offset))
        for i, blk in enumerate(self.decoder):
            y = blk(
                y,
                memory=memory,
                memory_key_padding_mask=mask,
                offset=offset,
                cache=None if cache is None else cache.layer(i),
            )
        if cache is not None:
            cache.advance(tgt.shape[1])
        if last_only:
            y = y[:, -1:]
        if self.dec_norm is not None:
            y = self.dec_norm(y)
        return self.head(y)

    def new_cache(self, batch: int, capacity: int):
        """A preallocated ``KVCache`` for the decoder: self-attention keys and values of
        up to ``capacity`` target positions, and room for the cross-attention ones."""
        from ..generate.decoding import new_cache

        return new_cache(self, list(self.decoder), batch, capacity)

    def generate(
        self,
        src,
        max_len: int = 32,
        *,
        bos_id: int,
        eos_id=None,
        temperature: float = 0.0,
        top_k=None,
        top_p=None,
        seed=None,
        use_cache: bool = True,
        src_key_padding_mask=None,
        progress: bool = False,
        callback=None,
    ):
        """Target tokens after BOS, (B, n <= max_len) int64; rows stop at eos_id (filled
        with it after). Greedy at temperature 0, else seeded top-k / top-p sampling."""
        from ..generate.decoding import generate_seq2seq

        return generate_seq2seq(
            self,
            src,
            max_len=max_len,
            bos_id=bos_id,
            eos_id=eos_id,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            use_cache=use_cache,
            src_key_padding_mask=src_key_padding_mask,
            progress=progress,
            callback=callback,
        )

    def score(self, src, tgt, *, bos_id: int, src_key_padding_mask=None):
        """Teacher-forced log p(tgt[:, i] | src, BOS, tgt[:, :i]), (B, Tt) float64."""
        from ..generate.decoding import score_seq2seq

        return score_seq2seq(
            self, src, tgt, bos_id=bos_id, src_key_padding_mask=src_key_padding_mask
        )

    def forward(self, src, tgt, src_key_padding_mask=None):
        """src (B, Ts), tgt (B, Tt) int; src_key_padding_mask (B, Ts) bool -> (B, Tt, Vt)."""
        mask = self.source_mask(src, src_key_padding_mask)
        return self.decode(tgt, self.encode(src, mask), mask)

    def backward(self, dlogits):
        dy = self.head.backward(dlogits)
        if self.dec_norm is not None:
            dy = self.dec_norm.backward(dy)
        dmemory = None
        for blk in reversed(self.decoder._list):
            dy, dm = blk.backward(dy)
            dmemory = dm if dmemory is None else dmemory + dm
        self.tgt_emb.backward(self.pe.backward(self.tgt_drop.backward(dy)))
        dx = dmemory if self.enc_norm is None else self.enc_norm.backward(dmemory)
        dx = backward_stack(self.encoder, dx)
        self.src_emb.backward(self.pe.backward(self.src_drop.backward(dx)))
