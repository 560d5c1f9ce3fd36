"""Positions: sinusoidal and learned additive encodings, rotary tables (RoPE)
and ALiBi biases.

    pe = SinusoidalPositionalEncoding(64, max_len=512)
    x = pe(x)                                  # x (B, T, 64) + table[:T]
    wpe = LearnedPositionalEmbedding(512, 64)
    x = wpe(x)                                 # x + weight[:T]; backward adds into weight.grad
    rope = RotaryEmbedding(head_dim=16, max_seq_len=512)
    q = rope.forward(q, offset=0)              # q (B, H, T, 16), adjacent pairs rotated
    bias = alibi_bias(alibi_slopes(8), tq, tk) # (8, Tq, Tk), added to attention scores

``offset`` is the position of the first token, for decoding after a prefix.
"""

from __future__ import annotations

import math

import numpy as np

from . import init
from .module import Module, Parameter


def sinusoidal_table(max_len: int, dim: int, dtype=np.float32):
    """(max_len, dim): PE[p, 2i] = sin(p / 10000^(2i/dim)), PE[p, 2i+1] = cos(same)."""
    pos = np.arange(max_len, dtype=np.float64)[:, None]
    freq = np.exp(-math.log(10000.0) * np.arange(0, dim, 2, dtype=np.float64) / dim)
    table = np.zeros((max_len, dim), np.float64)
    table[:, 0::2] = np.sin(pos * freq)
    table[:, 1::2] = np.cos(pos * freq[: dim // 2])
    return table.astype(dtype)


def _check_len(name, offset, t, max_len):
    if offset < 0 or offset + t > max_len:
        raise ValueError(f"{name}: positions {offset}..{offset + t - 1} exceed max_len {max_len}")


def _rows_at(table, positions, x, name, max_len, xp):
    positions = np.asarray(positions)
    if positions.shape != tuple(x.shape[:2]):
        raise ValueError(f"{name}: positions {positions.shape} do not match x {tuple(x.shape)}")
    if positions.size and (positions.min() < 0 or positions.max() >= max_len):
        raise ValueError(
            f"{name}: positions {positions.min()}..{positions.max()} exceed max_len {max_len}"
        )
    return table[xp.asarray(positions)]


class SinusoidalPositionalEncoding(Module):
    """Adds the fixed sinusoidal table of "Attention Is All You Need"; no parameters."""

    def __init__(self, dim: int, max_len: int = 2048, *, dtype=np.float32):
        super().__init__()
        self.dim, self.max_len = dim, max_len
        self.register_buffer("table", sinusoidal_table(max_len, dim, dtype))

    def forward(self, x, offset: int = 0, positions=None):
        """x (B, T, dim) -> x + table[offset:offset+T]; positions (B, T) host ints
        (one row per sequence, for decoding only) instead of offset."""
        if positions is not None:
            return x + _rows_at(
                self.table, positions, x, "SinusoidalPositionalEncoding", self.max_len, self.ops.xp
            )
        t = x.shape[-2]
        _check_len("SinusoidalPositionalEncoding", offset, t, self.max_len)
        return x + self.table[offset : offset + t]

    def backward(self, dy):
        return dy


class LearnedPositionalEmbedding(Module):
    """Adds a trained (max_len, dim) table, as GPT and BERT do."""

    def __init__(self, max_len: int, dim: int, *, std: float = 0.02, rng=None, dtype=np.float32):
        super().__init__()
        self.dim, self.max_len = dim, max_len
        self.weight = Parameter(init.normal((max_len, dim), std, rng, dtype))

    def forward(self, x, offset: int = 0, positions=None):
        """x (B, T, dim) -> x + weight[offset:offset+T]; positions (B, T) host ints
        (one row per sequence, for decoding only) instead of offset."""
        if positions is not None:
            return x + _rows_at(
                self.weight.data,
                positions,
                x,
                "LearnedPositionalEmbedding",
                self.max_len,
                self.ops.xp,
            )
        t = x.shape[-2]
        _check_len("LearnedPositionalEmbedding", offset, t, self.max_len)
        if self.training:
            self.cache = (offset, t)
        return x + self.weight.data[offset : offset + t]

    def backward(self, dy):
        offset, t = self.take_cache()
        g = self.ops.xp.zeros_like(self.weight.data)
        g[offset : offset + t] = dy.reshape(-1, t, self.dim).sum(axis=0)
        self.weight.add_grad(g)
        return dy


def rope_tables(max_len: int, head_dim: int, base: float = 10000.0, dtype=np.float32):
    """cos, sin (max_len, head_dim/2): angle[p, i] = p * base^(-2i/head_dim), for the
    adjacent pairs (x[2i], x[2i+1]) that the rope op rotates."""
    if head_dim % 2:
        raise ValueError(f"rope_tables: head_dim must be even, got {head_dim}")
    inv = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    ang = np.arange(max_len, dtype=np.float64)[:, None] * inv[None, :]
    return np.cos(ang).astype(dtype), np.sin(ang).astype(dtype)


class RotaryEmbedding(Module):
    """Rotary position embedding applied to queries and keys (B, H, T, head_dim).
    Stateless between calls: forward and backward take the same ``offset``."""

    def __init__(
        self, head_dim: int, max_seq_len: int = 2048, base: float = 10000.0, *, dtype=np.float32
    ):
        super().__init__()
        self.head_dim, self.max_seq_len, self.base = head_dim, max_seq_len, base
        cos, sin = rope_tables(max_seq_len, head_dim, base, dtype)
        self.register_buffer("cos", cos)
        self.register_buffer("sin", sin)

    def _tables(self, t, offset):
        _check_len("RotaryEmbedding", offset, t, self.max_seq_len)
        return self.cos[offset : offset + t], self.sin[offset : offset + t]

    def forward(self, x, offset: int = 0, positions=None):
        """x (B, H, T, D); positions (B, T) host ints, one row of positions per
        sequence (decoding left-padded prompts), instead of offset."""
        if positions is not None:
            return self._forward_rows(x, positions)
        cos, sin = self._tables(x.shape[-2], offset)
        return self._rotate(self.ops._rope_forward, self.ops.rope_forward, x, cos, sin)

    def _forward_rows(self, x, positions):
        positions = np.asarray(positions)
        if positions.shape != (x.shape[0], x.shape[-2]):
            raise ValueError(
                f"RotaryEmbedding: positions {positions.shape} do not match "
                f"x {tuple(x.shape)} (want (B, T))"
            )
        if positions.min() < 0 or positions.max() >= self.max_seq_len:
            raise ValueError(
                f"RotaryEmbedding: positions {positions.min()}..{positions.max()} "
                f"exceed max_len {self.max_seq_len}"
            )
        xp = self.ops.xp
        idx = xp.asarray(positions)
        cos, sin = self.cos[idx], self.sin[idx]
        fast, checked = self.ops._rope_forward, self.ops.rope_forward
        return xp.stack([self._rotate(fast, checked, x[i], cos[i], sin[i]) for i in range(len(x))])

    def backward(self, dy, offset: int = 0):
        cos, sin = self._tables(dy.shape[-2], offset)
        return self._rotate(self.ops._rope_backward, self.ops.rope_backward, dy, cos, sin)

    def _rotate(self, fast, checked, x, cos, sin):
        """``fast(x, cos, sin)`` where x is what an attention layer hands over (its
        heads, (..., T, head_dim), of the tables' dtype; cos and sin are this layer's
        rows for those T positions), else the public op ``checked``, which checks."""
        if self.ops._ready(x, cos.dtype, self.head_dim) and x.ndim >= 2:
            return fast(x, cos, sin)
        return checked(x, cos, sin)


def alibi_slopes(n_heads: int):
    """The per-head slopes of ALiBi (Press et al.): a geometric sequence from 2^(-8/n);
    for a head count that is not a power of two, the extra heads take the odd
    powers of the next one, as the paper's reference code does."""

    def pow2(n):
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** math.floor(math.log2(n_heads))
    slopes = pow2(closest)
    if closest < n_heads:
        slopes += pow2(2 * closest)[0::2][: n_heads - closest]
    return np.asarray(slopes, dtype=np.float64)


def alibi_bias(slopes, tq: int, tk: int, dtype=np.float32):
    """(H, Tq, Tk): -slope * distance between query i (at position i + Tk - Tq) and key j."""
    qpos = np.arange(tq)[:, None] + (tk - tq)
    dist = np.abs(qpos - np.arange(tk)[None, :])
    return (-np.asarray(slopes)[:, None, None] * dist[None]).astype(dtype)
