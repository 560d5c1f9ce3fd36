"""Transformer blocks: self-attention (+ cross-attention) + feed-forward, each
sublayer in a residual with pre-norm (x + f(norm(x))) or post-norm (norm(x + f(x))).

    blk = EncoderBlock(64, 4, 256)                        # BERT / encoder layer
    blk = DecoderBlock(64, 4, 256)                        # causal self + cross-attention
    blk = DecoderBlock(64, 4, 256, cross_attention=False) # GPT / Llama layer
    y = blk(x, memory=m, memory_key_padding_mask=src_pad)
    dx = blk.backward(dy)          # cross-attention blocks return (dx, dmemory)

Parameter names inside a block: ln1.*, attn.*, [ln_cross.*, cross_attn.*], ln2.*, ff.*.

What a block is built from is up to three factories, so that other layers
plug in without a new block or model class (models take the same three and
pass them to every block):

    linear(in_features, out_features, bias, *, rng, dtype, name)      every projection
    ff(layer, d_model, d_ff, *, activation, bias, gelu_approximate, rng, dtype, linear, name)
    mixer(layer, d_model, n_heads, *, n_kv_heads, causal, bias, rope, alibi, rng, dtype,
          linear, name)                                                the self-attention

defaults ``make_linear``, ``make_feed_forward``, ``make_self_attention``.
``layer`` is the block's index in its stack, ``name`` the new module's dotted
name ("blocks.3.ff" when the block was given name="blocks.3"), and the
``linear`` a factory receives is already scoped to that name, so that its
projections are called "blocks.3.ff.fc1" and so on. Factories should accept
keywords they have no use for (``**kw``): a state-space mixer ignores rope.

    def ff(layer, d_model, d_ff, **kw):           # an expert layer in every 2nd block
        return MoE(d_model, d_ff, **kw) if layer % 2 else make_feed_forward(layer, d_model, d_ff, **kw)

A mixer, in ``attn``, is any module with
    forward(x (B, T, C), *, key_padding_mask=None, offset=0, cache=None) -> (B, T, C)
    backward(dy) -> dx
    new_state(batch, capacity, dtype) -> its own decode state (anything)
When decoding, ``cache`` is its ``LayerCache`` (generate/cache.py): ``cache.state``
is what its new_state made, ``cache.rows`` the per-row bookkeeping shared by
all layers (``length``, ``positions(t)``, the padding ``mask`` (B, capacity)).
Cross-attention stays a ``MultiHeadAttention`` (its projections do come from
``linear``). The block's own state is the tuple of its mixing layers' states.

``checkpoint=True`` (activation recomputation): forward keeps only the block's
inputs and the states of its dropout generators; backward runs forward again
(same masks) before going back through it, so the gradients are the same and
the activations of the block are held only during its own backward.
"""

from __future__ import annotations

import numpy as np

from .attention import MultiHeadAttention, make_self_attention
from .dropout import Dropout
from .feedforward import make_feed_forward
from .linear import make_linear, scoped
from .module import Module
from .norm import make_norm


class TransformerBlock(Module):
    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        *,
        n_kv_heads=None,
        dropout: float = 0.0,
        causal: bool = False,
        cross_attention: bool = False,
        norm_first: bool = True,
        norm: str = "layer",
        norm_eps=None,
        activation: str = "gelu",
        gelu_approximate: str = "tanh",
        bias: bool = True,
        rope=None,
        alibi: bool = False,
        checkpoint: bool = False,
        layer: int = 0,
        name: str = "",
        linear=make_linear,
        ff=make_feed_forward,
        mixer=make_self_attention,
        rng=None,
        dtype=np.float32,
    ):
        """layer: the block's index in its stack, name: its dotted name in the model,
        both only passed on to the factories (see the module docstring)."""
        super().__init__()
        rng = np.random.default_rng(rng)
        self.norm_first, self.checkpoint = norm_first, checkpoint
        self.cross_attention = cross_attention
        prefix = f"{name}." if name else ""

        def drop():
            return Dropout(dropout, rng=int(rng.integers(2**63)))

        def placed(part):  # what a factory gets besides its own arguments
            return dict(
                rng=rng, dtype=dtype, linear=scoped(linear, f"{prefix}{part}."), name=prefix + part
            )

        self.ln1 = make_norm(norm, d_model, norm_eps, dtype)
        self.attn = mixer(
            layer,
            d_model,
            n_heads,
            n_kv_heads=n_kv_heads,
            causal=causal,
            bias=bias,
            rope=rope,
            alibi=alibi,
            **placed("attn"),
        )
        self.drop1 = drop()
        if cross_attention:
            self.ln_cross = make_norm(norm, d_model, norm_eps, dtype)
            self.cross_attn = MultiHeadAttention(
                d_model,
                n_heads,
                n_kv_heads,
                cross=True,
                bias=bias,
                rng=rng,
                dtype=dtype,
                linear=scoped(linear, prefix + "cross_attn."),
            )
            self.drop_cross = drop()
        self.ln2 = make_norm(norm, d_model, norm_eps, dtype)
        self.ff = ff(
            layer,
            d_model,
            d_ff,
            activation=activation,
            bias=bias,
            gelu_approximate=gelu_approximate,
            **placed("ff"),
        )
        self.drop2 = drop()

    def new_state(self, batch: int, capacity: int, dtype=np.float32) -> tuple:
        """The block's decode state: its self-attention's, then its cross-attention's."""
        states = [self.attn.new_state(batch, capacity, dtype)]
        if self.cross_attention:
            states.append(self.cross_attn.new_state(batch, capacity, dtype))
        return tuple(states)

    # -- one residual sublayer ---------------------------------------------------
    def _sub_forward(self, norm, layer, drop, x, **kw):
        out = drop(layer(norm(x) if self.norm_first else x, **kw))
        out += x
        return out if self.norm_first else norm(out)

    def _sub_backward(self, norm, layer, drop, dy):
        """-> (dx, dmemory or None)."""
        dz = dy if self.norm_first else norm.backward(dy)  # d of the residual sum
        g = layer.backward(drop.backward(dz))
        dh, dmem = g if isinstance(g, tuple) else (g, None)
        dx = norm.backward(dh) if self.norm_first else dh
        dx += dz
        return dx, dmem

    # -- the block ------------------------------------------------------------------
    def _forward(self, x, memory, key_padding_mask, memory_key_padding_mask, offset, cache=None):
        parts = (None, None) if cache is None else cache.parts()
        x = self._sub_forward(
            self.ln1,
            self.attn,
            self.drop1,
            x,
            key_padding_mask=key_padding_mask,
            offset=offset,
            cache=parts[0],
        )
        if self.cross_attention:
            x = self._sub_forward(
                self.ln_cross,
                self.cross_attn,
                self.drop_cross,
                x,
                memory=memory,
                key_padding_mask=memory_key_padding_mask,
                cache=parts[1],
            )
        return self._sub_forward(self.ln2, self.ff, self.drop2, x)

    def forward(
        self,
        x,
        memory=None,
        key_padding_mask=None,
        memory_key_padding_mask=None,
        offset: int = 0,
        cache=None,
    ):
        """x (B, T, d_model); memory (B, Tm, d_model) for cross-attention; key_padding_mask
        (B, T) and memory_key_padding_mask (B, Tm) bool, True = padding; cache: this
        block's ``LayerCache`` when decoding, whose state is ``new_state``'s tuple
        (inference only: the self-attention mask and positions then come from the cache)."""
        if cache is not None:
            if self.training:
                raise ValueError("TransformerBlock: a KV cache is for inference; call model.eval()")
            return self._forward(x, memory, None, memory_key_padding_mask, offset, cache)
        args = (x, memory, key_padding_mask, memory_key_padding_mask, offset)
        if not (self.checkpoint and self.training):
            return self._forward(*args)
        states = self.rng_states()
        y = self._forward(*args)
        self.clear_cache()
        self.cache = (args, states)
        return y

    def backward(self, dy):
        """dy (B, T, d_model) -> dx, or (dx, dmemory) with cross-attention."""
        if self.checkpoint:
            args, states = self.take_cache()
            self.set_rng_states(states)
            self._forward(*args)
        dx, _ = self._sub_backward(self.ln2, self.ff, self.drop2, dy)
        dmem = None
        if self.cross_attention:
            dx, dmem = self._sub_backward(self.ln_cross, self.cross_attn, self.drop_cross, dx)
        dx, _ = self._sub_backward(self.ln1, self.attn, self.drop1, dx)
        return (dx, dmem) if self.cross_attention else dx


class EncoderBlock(TransformerBlock):
    """Bidirectional self-attention + feed-forward (the encoder layer; BERT's layer)."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, **kw):
        super().__init__(d_model, n_heads, d_ff, causal=False, cross_attention=False, **kw)


class DecoderBlock(TransformerBlock):
    """Causal self-attention, cross-attention over ``memory`` (unless
    ``cross_attention=False``, the GPT / Llama layer), feed-forward."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, cross_attention: bool = True, **kw):
        super().__init__(d_model, n_heads, d_ff, causal=True, cross_attention=cross_attention, **kw)
