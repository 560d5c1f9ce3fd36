"""``MultiHeadAttention``: self- or cross-attention with MHA, GQA or MQA heads.

    attn = MultiHeadAttention(64, n_heads=8, n_kv_heads=2, causal=True)   # GQA
    y = attn(x, key_padding_mask=None)          # x (B, T, 64); mask (B, Tk) bool, True = padded
    dx = attn.backward(dy)
    xattn = MultiHeadAttention(64, 8, cross=True)
    y = xattn(x, memory=m, key_padding_mask=src_pad)
    dx, dm = xattn.backward(dy)                 # cross-attention also returns d memory

Set ``attn.keep_weights = True`` to keep the attention probabilities of the
last forward as ``attn.weights``, a host array (B, H, Tq, Tk) (computed apart
from the fused kernel, so only for inspection).

Parameters (D = d_model // n_heads, Hkv = n_kv_heads):
  self:  qkv.weight ((n_heads + 2 Hkv) D, d_model), rows [q | k | v]; qkv.bias
  cross: q.weight (n_heads D, d_model); kv.weight (2 Hkv D, d_model), rows [k | v]
  both:  proj.weight (d_model, n_heads D); proj.bias

The fused ``ops.attention_forward/backward`` (flash attention on rust) does the
work on (B, H, T, D) arrays; ALiBi, which adds a bias to the scores, takes the
unfused path: matmul, softmax, matmul.

Every projection comes from the ``linear=`` factory (see linear.py). Self-
attention is the blocks' default mixing layer (``make_self_attention``, the
``mixer=`` factory described in blocks.py). For decoding each layer owns its
state: ``attn.new_state(batch, capacity)`` is an ``AttentionState``, key and
value buffers (B, Hkv, capacity, D) that each step writes its new positions
into; for cross-attention it is a ``CrossAttentionState``, the memory's keys
and values, computed on the first step and reused. The cache that holds the
states (generate/cache.py) passes a layer its slot as ``cache=``.
"""

from __future__ import annotations

import math

import numpy as np

from ..backends import to_host
from .linear import make_linear
from .module import Module
from .positional import RotaryEmbedding, alibi_bias, alibi_slopes

_MASKED = -1e9  # a finite "minus infinity" for masked scores in the unfused path


class AttentionState:
    """A self-attention layer's decode state: keys ``k`` and values ``v``, each
    (B, Hkv, capacity, D), of the positions decoded so far."""

    __slots__ = ("k", "v")

    def __init__(self, k, v):
        self.k, self.v = k, v

    def write(self, k_new, v_new, start: int) -> int:
        """Stores (B, Hkv, t, D) keys and values at positions [start, start + t);
        returns start + t, the number of positions in use after them."""
        end, capacity = start + k_new.shape[2], self.k.shape[2]
        if end > capacity:
            raise ValueError(f"KVCache: {end} positions exceed its capacity {capacity}")
        self.k[:, :, start:end] = k_new
        self.v[:, :, start:end] = v_new
        return end

    def nbytes(self) -> int:
        return int(self.k.nbytes) + int(self.v.nbytes)


class CrossAttentionState:
    """A cross-attention layer's decode state: the keys ``k`` and values ``v``
    (B, Hkv, Tm, D) of the memory, None until the first step computes them."""

    __slots__ = ("k", "v")

    def __init__(self):
        self.k = self.v = None

    def nbytes(self) -> int:
        return 0 if self.k is None else int(self.k.nbytes) + int(self.v.nbytes)


class MultiHeadAttention(Module):
    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads=None,
        *,
        causal: bool = False,
        cross: bool = False,
        bias: bool = True,
        rope: RotaryEmbedding = None,
        alibi: bool = False,
        rng=None,
        dtype=np.float32,
        linear=make_linear,
    ):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if d_model % n_heads:
            raise ValueError(
                f"MultiHeadAttention: d_model {d_model} is not divisible by n_heads {n_heads}"
            )
        if n_heads % n_kv_heads:
            raise ValueError(
                f"MultiHeadAttention: n_heads {n_heads} is not a multiple of "
                f"n_kv_heads {n_kv_heads}"
            )
        if rope is not None and alibi:
            raise ValueError("MultiHeadAttention: choose RoPE or ALiBi, not both")
        rng = np.random.default_rng(rng)
        self.d_model, self.n_heads, self.n_kv_heads = d_model, n_heads, n_kv_heads
        self.head_dim = d = d_model // n_heads
        self.causal, self.cross = causal, cross
        if cross:
            self.q = linear(d_model, n_heads * d, bias, rng=rng, dtype=dtype, name="q")
            self.kv = linear(d_model, 2 * n_kv_heads * d, bias, rng=rng, dtype=dtype, name="kv")
        else:
            self.qkv = linear(
                d_model, (n_heads + 2 * n_kv_heads) * d, bias, rng=rng, dtype=dtype, name="qkv"
            )
        self.proj = linear(n_heads * d, d_model, bias, rng=rng, dtype=dtype, name="proj")
        self.rope = rope
        if alibi:
            self.register_buffer("slopes", alibi_slopes(n_heads))
        self.alibi = alibi
        self.keep_weights = False
        self.weights = None

    # -- layout: (B, T, h D) <-> (B, h, T, D), one copy each way ----------------
    def _heads(self, x, h):
        b, t = x.shape[0], x.shape[1]
        return self.ops.xp.ascontiguousarray(
            x.reshape(b, t, h, self.head_dim).transpose(0, 2, 1, 3)
        )

    def _merge(self, x):
        b, h, t, d = x.shape
        return self.ops.xp.ascontiguousarray(x.transpose(0, 2, 1, 3)).reshape(b, t, h * d)

    def _put_heads(self, out4, start, g):
        """Writes g (B, h, T, D) into out4 (B, T, heads, D) at heads [start, start + h)."""
        out4[:, :, start : start + g.shape[1]] = g.transpose(0, 2, 1, 3)

    # -- forward / backward ----------------------------------------------------
    def forward(self, x, memory=None, key_padding_mask=None, offset: int = 0, cache=None):
        """x (B, Tq, d_model); memory (B, Tk, d_model) for cross-attention;
        key_padding_mask (B, Tk) bool; offset: position of x[:, 0] (RoPE / ALiBi);
        cache: this layer's ``LayerCache`` when decoding (see generate/cache.py): its
        ``state`` comes from ``new_state``, and its ``rows`` give the positions and
        the padding mask (key_padding_mask is then not used for self-attention)."""
        if cache is not None:
            return self._cached_forward(x, memory, key_padding_mask, cache)
        h, hkv, d = self.n_heads, self.n_kv_heads, self.head_dim
        if self.cross:
            if memory is None:
                raise ValueError("MultiHeadAttention(cross=True) needs memory")
            q = self._heads(self.q(x), h)
            kv = self.kv(memory)
            k, v = self._heads(kv[..., : hkv * d], hkv), self._heads(kv[..., hkv * d :], hkv)
        else:
            qkv = self.qkv(x)
            q = self._heads(qkv[..., : h * d], h)
            k = self._heads(qkv[..., h * d : (h + hkv) * d], hkv)
            v = self._heads(qkv[..., (h + hkv) * d :], hkv)
        if self.rope is not None:
            q = self.rope.forward(q, offset)
            k = self.rope.forward(k, offset)
        if self.alibi:
            o, extra = self._unfused_forward(q, k, v, key_padding_mask)
        else:
            o, extra = self._attend(q, k, v, key_padding_mask, self.cross)
        if self.keep_weights:
            self.weights = self._weights(q, k, key_padding_mask)
        if self.training:
            self.cache = (q, k, v, o, extra, key_padding_mask, offset)
        return self.proj(self._merge(o))

    # -- decoding with a KV cache (inference only) ------------------------------------
    def new_state(self, batch: int, capacity: int, dtype=np.float32):
        """This layer's decode state for ``batch`` rows of up to ``capacity`` positions,
        on its backend: zeroed key/value buffers for self-attention, an empty slot for
        cross-attention (filled from memory on the first step)."""
        if self.cross:
            return CrossAttentionState()
        xp = self.ops.xp
        shape = (batch, self.n_kv_heads, capacity, self.head_dim)
        return AttentionState(xp.zeros(shape, dtype=dtype), xp.zeros(shape, dtype=dtype))

    def _cached_forward(self, x, memory, key_padding_mask, cache):
        h, hkv, d = self.n_heads, self.n_kv_heads, self.head_dim
        b, t = x.shape[0], x.shape[1]
        state = cache.state
        if self.cross:
            if state.k is None:  # the encoder output's keys and values, once per source
                if memory is None:
                    raise ValueError("MultiHeadAttention(cross=True) needs memory")
                kv = self.kv(memory)
                state.k = self._heads(kv[..., : hkv * d], hkv)
                state.v = self._heads(kv[..., hkv * d :], hkv)
            q, k, v = self._heads(self.q(x), h), state.k, state.v
            if self.keep_weights:
                self.weights = self._weights(q, k, key_padding_mask)
            o, _ = self._attend(q, k, v, key_padding_mask, True)
            return self.proj(self._merge(o))
        rows = cache.rows
        start = rows.length
        qkv = self.qkv(x)
        q = self._heads(qkv[..., : h * d], h)
        k = qkv[..., h * d : (h + hkv) * d].reshape(b, t, hkv, d).transpose(0, 2, 1, 3)
        v = qkv[..., (h + hkv) * d :].reshape(b, t, hkv, d).transpose(0, 2, 1, 3)
        if self.rope is not None:
            positions = rows.positions(t)
            q = self.rope.forward(q, start, positions=positions)
            k = self.rope.forward(self.ops.xp.ascontiguousarray(k), start, positions=positions)
        end = state.write(k, v, start)
        if self.alibi or self.keep_weights:
            ks, vs = state.k[:, :, :end], state.v[:, :, :end]
            mask = None if rows.mask is None else rows.mask[:, :end]
            p = self._probabilities(q, ks, mask)
            if self.keep_weights:
                self.weights = to_host(p).astype(np.float32, copy=False)
            if self.alibi:
                return self.proj(self._merge(self.ops.matmul(p, self._repeat_kv(vs))))
        o, _ = self._attend(q, state.k, state.v, rows.mask, False, end)
        return self.proj(self._merge(o))

    def _attend_backward(self, do, q, k, v, o, lse, mask):
        """attention_backward of what ``_attend`` computed: unchecked where the
        forward's fast path could be taken and ``do`` (from proj.backward) has q's shape."""
        ops = self.ops
        if (
            self.cross
            or mask is not None
            or not ops._ready(do, q.dtype, self.head_dim, 2 * self.head_dim)
            or do.shape != q.shape
            or not q.dtype == k.dtype == v.dtype == o.dtype
        ):
            return ops.attention_backward(
                do, q, k, v, o, lse, causal=self.causal, key_padding_mask=mask
            )
        scale = 1.0 / math.sqrt(self.head_dim)
        return ops._attention_backward(do, q, k, v, o, lse, self.causal, scale, mask)

    def _attend(self, q, k, v, mask, checked: bool, kv_len=None):
        """The attention op on this layer's own q, k, v (its projections' heads, its
        KV-cache buffers and their mask). The shapes agree by construction, so the
        op's unchecked path takes them, unless ``checked`` (cross-attention, whose
        keys come from the caller's memory), a caller's key_padding_mask is given
        (``mask`` without ``kv_len``), or a dtype differs: then the public op checks."""
        ops = self.ops
        fast = (
            not checked
            and (mask is None or kv_len is not None)
            and ops._ready(q, k.dtype, self.head_dim, 1)
            and v.dtype == k.dtype
        )
        if not fast:
            return ops.attention_forward(
                q, k, v, causal=self.causal, key_padding_mask=mask, kv_len=kv_len
            )
        scale = 1.0 / math.sqrt(self.head_dim)
        if kv_len is None:
            return ops._attention_forward(q, k, v, self.causal, scale, mask)
        return ops._attention_forward_cached(q, k, v, self.causal, scale, mask, kv_len)

    def backward(self, dy):
        """dy (B, Tq, d_model) -> dx, or (dx, dmemory) for cross-attention."""
        q, k, v, o, extra, mask, offset = self.take_cache()
        h, hkv = self.n_heads, self.n_kv_heads
        do = self._heads(self.proj.backward(dy), h)
        if self.alibi:
            dq, dk, dv = self._unfused_backward(do, q, k, v, extra)
        else:
            dq, dk, dv = self._attend_backward(do, q, k, v, o, extra, mask)
        if self.rope is not None:
            dq = self.rope.backward(dq, offset)
            dk = self.rope.backward(dk, offset)
        xp = self.ops.xp
        b, tq, tk, d = q.shape[0], q.shape[2], k.shape[2], self.head_dim
        if self.cross:
            dx = self.q.backward(self._merge(dq))
            dkv = xp.empty((b, tk, 2 * hkv, d), dtype=dk.dtype)
            self._put_heads(dkv, 0, dk)
            self._put_heads(dkv, hkv, dv)
            return dx, self.kv.backward(dkv.reshape(b, tk, 2 * hkv * d))
        dqkv = xp.empty((b, tq, h + 2 * hkv, d), dtype=dq.dtype)
        self._put_heads(dqkv, 0, dq)
        self._put_heads(dqkv, h, dk)
        self._put_heads(dqkv, h + hkv, dv)
        return self.qkv.backward(dqkv.reshape(b, tq, (h + 2 * hkv) * d))

    # -- the unfused path (ALiBi): scores materialised as (B, H, Tq, Tk) ---------
    def _repeat_kv(self, x):
        g = self.n_heads // self.n_kv_heads
        return x if g == 1 else self.ops.xp.repeat(x, g, axis=1)

    def _sum_kv(self, dx):
        g = self.n_heads // self.n_kv_heads
        if g == 1:
            return dx
        b, _, t, d = dx.shape
        return dx.reshape(b, self.n_kv_heads, g, t, d).sum(axis=2)

    def _probabilities(self, q, k, mask):
        """softmax(scale q k^T + ALiBi bias, masked): (B, H, Tq, Tk)."""
        ops, xp = self.ops, self.ops.xp
        tq, tk = q.shape[2], k.shape[2]
        scale = q.dtype.type(1.0 / np.sqrt(self.head_dim))
        s = ops.matmul(q, self._repeat_kv(k), trans_b=True) * scale
        if self.alibi:
            s += xp.asarray(alibi_bias(self.slopes, tq, tk, dtype=q.dtype))
        if mask is not None:
            s = xp.where(mask[:, None, None, :], q.dtype.type(_MASKED), s)
        if self.causal and tq != tk:
            # bottom-right aligned: query i sits at position i + tk - tq
            hidden = np.arange(tk)[None, :] > np.arange(tq)[:, None] + (tk - tq)
            s = xp.where(xp.asarray(hidden), q.dtype.type(_MASKED), s)
            return ops.softmax_forward(s)
        return ops.softmax_forward(s, causal=self.causal)

    def _weights(self, q, k, mask):
        """The attention probabilities as a host float32 array, for inspection."""
        return to_host(self._probabilities(q, k, mask)).astype(np.float32, copy=False)

    def _unfused_forward(self, q, k, v, mask):
        p = self._probabilities(q, k, mask)
        return self.ops.matmul(p, self._repeat_kv(v)), p

    def _unfused_backward(self, do, q, k, v, p):
        ops = self.ops
        scale = q.dtype.type(1.0 / np.sqrt(self.head_dim))
        kr, vr = self._repeat_kv(k), self._repeat_kv(v)
        dv = ops.matmul(p, do, trans_a=True)
        ds = ops.softmax_backward(ops.matmul(do, vr, trans_b=True), p) * scale
        dq = ops.matmul(ds, kr)
        dk = ops.matmul(ds, q, trans_a=True)
        return dq, self._sum_kv(dk), self._sum_kv(dv)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
            f"causal={self.causal}, cross={self.cross}, alibi={self.alibi}"
        )


def make_self_attention(
    layer: int, d_model: int, n_heads: int, *, n_kv_heads=None, name: str = "", **options
) -> MultiHeadAttention:
    """The default ``mixer=`` factory: multi-head self-attention in every block; the
    ``options`` (causal, bias, rope, alibi, rng, dtype, linear) as MultiHeadAttention
    takes them."""
    return MultiHeadAttention(d_model, n_heads, n_kv_heads, **options)
