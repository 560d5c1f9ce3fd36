"""Float rows -> GGUF blocks.

    raw = quantize(w, "Q4_K")           # w (rows, n) float, n % 256 == 0 -> (rows, n // 256 * 144) uint8
    w2 = dequantize(raw, "Q4_K")        # close to w (formats.py)

Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1 are the ``gguf`` package's own quantizers
(``gguf.quants.quantize``), so their bytes are what llama.cpp's converter
writes. gguf has none for the K-quants; Q4_K and Q6_K here are llama.cpp's
reference algorithm (``quantize_row_q4_K_ref`` with ``make_qkx2_quants``,
``quantize_row_q6_K_ref`` with ``make_qx_quants``: the quantizer llama.cpp
uses without an importance matrix), written over all sub-blocks at once in
float32 with its sums taken left to right as the C loops take them. Where the
C compiler fuses a multiply-add, or two candidate scales tie to the last bit,
a block may come out differently from llama.cpp's; both are valid encodings.
"""

from __future__ import annotations

import numpy as np

from .formats import block_format

QUANTIZERS = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q6_K")
_GGUF_QUANTIZED = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
_CHUNK = 4096  # super-blocks per pass of the K-quantizers (bounds their scratch memory)
_EPS = np.float32(1e-15)  # llama.cpp's GROUP_MAX_EPS: a group below it is all zero
f32 = np.float32


def quantize(w, qtype) -> np.ndarray:
    """w (..., n) float -> (..., n / block_size * type_size) uint8 blocks of ``qtype``
    (one of ``QUANTIZERS``); n must be a multiple of the block size, w finite."""
    fmt = block_format(qtype)
    if fmt.name not in QUANTIZERS:
        raise ValueError(
            f"quantize: no quantizer for {fmt.name}; there are quantizers for "
            f"{', '.join(QUANTIZERS)}"
        )
    w = np.asarray(w)
    if not np.issubdtype(w.dtype, np.floating):
        raise TypeError(f"quantize: w must be a float array, got {w.dtype}")
    if w.ndim == 0 or w.shape[-1] % fmt.block_size:
        raise ValueError(
            f"quantize: {fmt.name} needs rows of a multiple of {fmt.block_size} "
            f"values, got w {w.shape}"
        )
    if not np.all(np.isfinite(w)):
        raise ValueError(f"quantize: w holds NaN or inf values, which {fmt.name} cannot encode")
    w = np.ascontiguousarray(w, dtype=np.float32)
    out_shape = (*w.shape[:-1], fmt.row_bytes(w.shape[-1]))
    if fmt.name in _GGUF_QUANTIZED:
        import gguf

        return np.asarray(
            gguf.quants.quantize(w, gguf.GGMLQuantizationType[fmt.name]), np.uint8
        ).reshape(out_shape)
    kernel = _q4_k_blocks if fmt.name == "Q4_K" else _q6_k_blocks
    x = w.reshape(-1, 256)
    out = np.empty((x.shape[0], fmt.type_size), np.uint8)
    for s in range(0, x.shape[0], _CHUNK):
        out[s : s + _CHUNK] = kernel(x[s : s + _CHUNK])
    return out.reshape(out_shape)


# -- helpers shared by the K-quantizers ----------------------------------------------
def _seqsum(a: np.ndarray) -> np.ndarray:
    """Sum over the last axis, left to right in float32 (the C loop's order)."""
    s = a[..., 0].copy()
    for i in range(1, a.shape[-1]):
        s += a[..., i]
    return s


def _nearest(v: np.ndarray) -> np.ndarray:
    """llama.cpp's nearest_int: round half to even, as int32."""
    return np.rint(v).astype(np.int32)


def _f16_bits(v: np.ndarray) -> np.ndarray:
    """float32 (n,) -> (n, 2) uint8 of the f16 value (GGML_FP32_TO_FP16 rounds to nearest even)."""
    return v.astype("<f2").view(np.uint8).reshape(-1, 2)


def _f16_value(v: np.ndarray) -> np.ndarray:
    return v.astype(np.float16).astype(np.float32)


# -- Q4_K ------------------------------------------------------------------------------
def _make_qkx2_quants(x, w, nmax: int, rmin: float, rdelta: float, nstep: int):
    """llama.cpp's make_qkx2_quants (squared error) on every group at once:
    x, w (g, n) -> (L (g, n) int32 in 0..nmax, scale (g,), the_min (g,)) with
    x ~ scale * L - the_min, searching nstep + 1 scales around nmax / (max - min)."""
    lo = np.minimum(x.min(axis=1), f32(0))
    hi = x.max(axis=1)
    sum_w, sum_x = _seqsum(w), _seqsum(w * x)
    flat = hi == lo
    lo = np.where(flat, hi - f32(1), lo)  # a flat group gets L = 0 below; avoid 0 / 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = f32(nmax) / (hi - lo)
        scale = f32(1) / iscale
        L = np.clip(_nearest(iscale[:, None] * (x - lo[:, None])), 0, nmax)
        diff = scale[:, None] * L.astype(np.float32) + lo[:, None] - x
        best = _seqsum(w * (diff * diff))
        cur = lo.copy()  # the best min so far: C searches around it, not around min(x)
        for step in range(nstep + 1):
            iscale = (f32(rmin) + f32(rdelta) * f32(step) + f32(nmax)) / (hi - cur)
            la = np.clip(_nearest(iscale[:, None] * (x - cur[:, None])), 0, nmax)
            lf = la.astype(np.float32)
            wl = w * lf
            sum_l, sum_l2, sum_xl = _seqsum(wl), _seqsum(wl * lf), _seqsum(wl * x)
            det = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            positive = this_min > 0
            this_min = np.where(positive, f32(0), this_min)
            this_scale = np.where(positive, sum_xl / sum_l2, this_scale)
            diff = this_scale[:, None] * lf + this_min[:, None] - x
            err = _seqsum(w * (diff * diff))
            take = (det > 0) & (err < best)
            L = np.where(take[:, None], la, L)
            best = np.where(take, err, best)
            scale = np.where(take, this_scale, scale)
            cur = np.where(take, this_min, cur)
    L = np.where(flat[:, None], 0, L)
    scale = np.where(flat, f32(0), scale)
    return L, scale, -np.where(flat, np.minimum(hi, f32(0)), cur)


def _pack_k4_scales(ls, lm):
    """6-bit scales and mins (n, 8) -> the 12 bytes of Q4_K / Q5_K (see formats._k4_scales)."""
    s = np.zeros((ls.shape[0], 12), np.uint8)
    s[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    s[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    s[:, 8:12] = (ls[:, 4:8] & 0x0F) | ((lm[:, 4:8] & 0x0F) << 4)
    return s


def _q4_k_blocks(x):
    """x (n, 256) float32 -> (n, 144) uint8, quantize_row_q4_K_ref."""
    n = x.shape[0]
    sub = x.reshape(n * 8, 32)
    av_x = np.sqrt(_seqsum(sub * sub) / f32(32))
    weights = av_x[:, None] + np.abs(sub)
    L, scales, mins = _make_qkx2_quants(sub, weights, 15, -1.0, 0.1, 20)
    L, scales, mins = L.reshape(n, 8, 32), scales.reshape(n, 8), mins.reshape(n, 8)
    max_scale = np.maximum(scales.max(axis=1), f32(0))
    max_min = np.maximum(mins.max(axis=1), f32(0))
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, f32(63) / max_scale, f32(0))
        inv_min = np.where(max_min > 0, f32(63) / max_min, f32(0))
    # C stores nearest_int into a uint8 (wrapping) before MIN(63, .)
    ls = np.minimum(_nearest(inv_scale[:, None] * scales) & 0xFF, 63).astype(np.uint8)
    lm = np.minimum(_nearest(inv_min[:, None] * mins) & 0xFF, 63).astype(np.uint8)
    d_bits, dmin_bits = _f16_bits(max_scale / f32(63)), _f16_bits(max_min / f32(63))
    d = _f16_value(max_scale / f32(63))[:, None] * ls.astype(np.float32)
    dm = _f16_value(max_min / f32(63))[:, None] * lm.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        requant = np.clip(_nearest((x.reshape(n, 8, 32) + dm[:, :, None]) / d[:, :, None]), 0, 15)
    L = np.where((d != 0)[:, :, None], requant, L).astype(np.uint8)  # C skips a zero scale
    q = L.reshape(n, 4, 2, 32)
    qs = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(n, 128)
    return np.concatenate([d_bits, dmin_bits, _pack_k4_scales(ls, lm), qs], axis=1)


# -- Q6_K ------------------------------------------------------------------------------
def _make_qx_quants(x, nmax: int):
    """llama.cpp's make_qx_quants with rmse_type 1 and no weights (so w = x^2) on every
    group at once: x (g, n) -> (L (g, n) int32 in 0..2 nmax - 1, scale (g,)) with
    x ~ scale * (L - nmax), trying the scales -(nmax + 0.1 k) / max for k = -9..9."""
    g = x.shape[0]
    amax_at = np.argmax(np.abs(x), axis=1)  # the first of equal |x|, as C's strict >
    peak = x[np.arange(g), amax_at]
    zero = np.abs(peak) < _EPS
    peak = np.where(zero, f32(1), peak)
    w = x * x

    def trial(iscale):
        l = np.clip(_nearest(iscale[:, None] * x), -nmax, nmax - 1)
        lf = l.astype(np.float32)
        return l, _seqsum(w * x * lf), _seqsum(w * lf * lf)

    l, sumlx, suml2 = trial(f32(-nmax) / peak)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(suml2 != 0, sumlx / suml2, f32(0))
        best = scale * sumlx
        for k in range(-9, 10):
            if k == 0:
                continue
            lk, sx, s2 = trial(-(f32(nmax) + f32(0.1) * f32(k)) / peak)
            take = (s2 > 0) & (sx * sx > best * s2)
            l = np.where(take[:, None], lk, l)
            scale = np.where(take, sx / s2, scale)
            best = np.where(take, scale * sx, best)
    L = np.where(zero[:, None], 0, l + nmax)
    return L, np.where(zero, f32(0), scale)


def _q6_k_blocks(x):
    """x (n, 256) float32 -> (n, 210) uint8, quantize_row_q6_K_ref."""
    n = x.shape[0]
    L, scales = _make_qx_quants(x.reshape(n * 16, 16), 32)
    L, scales = L.reshape(n, 16, 16), scales.reshape(n, 16)
    pick = np.argmax(np.abs(scales), axis=1)
    max_scale = scales[np.arange(n), pick]
    empty = np.abs(max_scale) < _EPS
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = f32(-128) / np.where(empty, f32(1), max_scale)
        d_bits = _f16_bits(f32(1) / iscale)
        sc = np.minimum(_nearest(iscale[:, None] * scales), 127).astype(np.int8)
        d = _f16_value(f32(1) / iscale)[:, None] * sc.astype(np.float32)
        requant = np.clip(_nearest(x.reshape(n, 16, 16) / d[:, :, None]), -32, 31) + 32
    L = np.where((d != 0)[:, :, None], requant, L).astype(np.uint8).reshape(n, 2, 4, 32)
    ql = (L[:, :, 0:2] & 0x0F) | ((L[:, :, 2:4] & 0x0F) << 4)  # (n, half, 2, 32)
    qh = (
        (L[:, :, 0] >> 4)
        | ((L[:, :, 1] >> 4) << 2)
        | ((L[:, :, 2] >> 4) << 4)
        | ((L[:, :, 3] >> 4) << 6)
    )  # (n, half, 32)
    out = np.concatenate([ql.reshape(n, 128), qh.reshape(n, 64), sc.view(np.uint8), d_bits], axis=1)
    out[empty] = 0  # C zeroes a block whose scales all vanish
    return out
