"""ferroformer.quant: the GGUF block formats against the gguf package, the
quantizers (gguf's own where it has them; Q4_K and Q6_K against a literal
port of llama.cpp's reference C), QuantizedTensor, the reference product and
the quantized layers on small GPT and Llama models."""

from __future__ import annotations

import numpy as np
import pytest

from ferroformer.models import GPT, Llama
from ferroformer.nn import Linear
from ferroformer.quant import (
    FORMATS,
    QUANTIZERS,
    QuantizedEmbedding,
    QuantizedLinear,
    QuantizedTensor,
    block_format,
    dequantize,
    quantize,
    quantize_model,
    quantized_linear_forward,
)

from helpers import assert_close

gguf = pytest.importorskip("gguf")


def random_blocks(rng, name, rows, blocks_per_row):
    """(rows, blocks_per_row * type_size) random bytes whose f16 scale fields hold
    finite halves of either sign, normal and subnormal."""
    fmt = FORMATS[name]
    raw = rng.integers(0, 256, (rows, blocks_per_row, fmt.type_size), dtype=np.uint8)
    for at in fmt.half_offsets:
        h = (
            rng.standard_normal((rows, blocks_per_row))
            * rng.choice([1e-6, 1e-2, 3.0], (rows, blocks_per_row))
        ).astype(np.float16)
        assert np.isfinite(h).all()
        raw[:, :, at : at + 2] = h.view(np.uint8).reshape(rows, blocks_per_row, 2)
    return raw.reshape(rows, -1)


def same_bits(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


# -- formats -------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FORMATS))
@pytest.mark.parametrize("rows,blocks", [(1, 1), (7, 3), (17, 2)])
def test_dequantize_equals_gguf_bit_for_bit(name, rows, blocks, rng):
    raw = random_blocks(rng, name, rows, blocks)
    mine = dequantize(raw, name)
    fmt = FORMATS[name]
    assert mine.dtype == np.float32 and mine.shape == (rows, blocks * fmt.block_size)
    assert same_bits(mine, gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[name])), name


@pytest.mark.parametrize("name", list(FORMATS))
def test_format_sizes_are_ggufs(name):
    fmt = FORMATS[name]
    enum = gguf.GGMLQuantizationType[name]
    assert (fmt.block_size, fmt.type_size) == gguf.GGML_QUANT_SIZES[enum]
    assert fmt.ggml_type == int(enum)
    assert block_format(enum) is fmt and block_format(int(enum)) is fmt
    assert block_format(name.lower()) is fmt


def test_dequantize_of_known_blocks():
    # Q8_0: d = 0.5, q = -128..., Q4_0: d = 2, nibbles 0 and 15 -> -16 and 14
    q8 = np.zeros(34, np.uint8)
    q8[:2] = np.array([0.5], "<f2").view(np.uint8)
    q8[2:] = np.arange(-16, 16, dtype=np.int8).view(np.uint8)
    assert_close(dequantize(q8, "Q8_0"), 0.5 * np.arange(-16, 16), rtol=0, atol=0)
    q4 = np.zeros(18, np.uint8)
    q4[:2] = np.array([2.0], "<f2").view(np.uint8)
    q4[2:] = 0xF0  # low nibble 0 (values 0..15), high nibble 15 (values 16..31)
    assert_close(
        dequantize(q4, "Q4_0"), np.r_[np.full(16, -16.0), np.full(16, 14.0)], rtol=0, atol=0
    )


@pytest.mark.parametrize("qtype", ["IQ2_XS", "Q2_K", "q3_k", "TQ1_0"])
def test_unsupported_types_are_refused_by_name(qtype):
    with pytest.raises(
        ValueError,
        match=rf"quantized type {qtype.upper()} is not supported; "
        r"supported: F32, .*Q6_K",
    ):
        block_format(qtype)


def test_unsupported_enum_and_number_are_refused_by_name():
    for q in (gguf.GGMLQuantizationType.IQ2_XS, int(gguf.GGMLQuantizationType.IQ2_XS)):
        with pytest.raises(ValueError, match="quantized type IQ2_XS is not supported"):
            block_format(q)
    with pytest.raises(ValueError, match="quantized type number 9999 is not supported"):
        block_format(9999)
    with pytest.raises(TypeError):
        block_format(3.0)


def test_dequantize_checks_its_input():
    with pytest.raises(ValueError, match="whole blocks of 18 bytes"):
        dequantize(np.zeros((2, 20), np.uint8), "Q4_0")
    with pytest.raises(TypeError, match="uint8"):
        dequantize(np.zeros((2, 18), np.int8), "Q4_0")


# -- quantizers ----------------------------------------------------------------------
LEGACY = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]


@pytest.mark.parametrize("name", LEGACY)
def test_legacy_quantizers_are_ggufs_bytes(name, rng):
    w = rng.standard_normal((3, 5, 64)).astype(np.float32)
    raw = quantize(w, name)
    ref = gguf.quants.quantize(w, gguf.GGMLQuantizationType[name])
    assert raw.dtype == np.uint8 and raw.shape == (3, 5, 2 * FORMATS[name].type_size)
    assert np.array_equal(raw, ref)


def k_quant_rows(rng):
    """Super-blocks that reach the quantizers' corner cases: all zero, constant, one
    outlier, one sign only, zero sub-blocks, tiny and integer-valued values."""
    rows = [
        rng.standard_normal(256),
        rng.standard_normal(256) * 1e-3,
        np.zeros(256),
        np.full(256, 0.5),
        np.abs(rng.standard_normal(256)),
        -3 * np.abs(rng.standard_normal(256)),
        rng.uniform(-1, 1, 256),
        np.round(rng.standard_normal(256) * 4),
        rng.standard_normal(256) * 1e-20,
    ]
    outlier = rng.standard_normal(256) * 0.01
    outlier[17] = 5
    holes = rng.standard_normal(256)
    holes[:32] = 0
    holes[100:116] = 0
    return np.array([*rows, outlier, holes], np.float32)


# -- a literal, one value at a time port of llama.cpp's reference K-quantizers ----------
# (ggml-quants.c: nearest_int, make_qkx2_quants, quantize_row_q4_K_ref, make_qx_quants,
# quantize_row_q6_K_ref), float32 throughout, as the oracle of the vectorised code.
F = np.float32


def _nearest_int(v):
    return int(np.rint(F(v)))


def _f16(v):
    return F(np.float16(F(v)))


def _make_qkx2_scalar(x, weights, nmax, rmin, rdelta, nstep):
    n = len(x)
    L, Laux = [0] * n, [0] * n
    mn, mx = x[0], x[0]
    sum_w = weights[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        mn, mx = min(mn, x[i]), max(mx, x[i])
        sum_w += weights[i]
        sum_x += weights[i] * x[i]
    if mn > 0:
        mn = F(0)
    if mx == mn:
        return [0] * n, F(0), -mn
    iscale = F(nmax) / (mx - mn)
    scale = F(1) / iscale
    best = F(0)
    for i in range(n):
        L[i] = max(0, min(nmax, _nearest_int(iscale * (x[i] - mn))))
        diff = scale * F(L[i]) + mn - x[i]
        best += weights[i] * (diff * diff)
    for step in range(nstep + 1):
        iscale = (F(rmin) + F(rdelta) * F(step) + F(nmax)) / (mx - mn)
        sum_l = sum_l2 = sum_xl = F(0)
        for i in range(n):
            lv = max(0, min(nmax, _nearest_int(iscale * (x[i] - mn))))
            Laux[i] = lv
            wl = weights[i] * F(lv)
            sum_l += wl
            sum_l2 += wl * F(lv)
            sum_xl += wl * x[i]
        det = sum_w * sum_l2 - sum_l * sum_l
        if det > 0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            if this_min > 0:
                this_min, this_scale = F(0), sum_xl / sum_l2
            err = F(0)
            for i in range(n):
                diff = this_scale * F(Laux[i]) + this_min - x[i]
                err += weights[i] * (diff * diff)
            if err < best:
                L, best, scale, mn = list(Laux), err, this_scale, this_min
    return L, scale, -mn


def q4_k_scalar(x):
    """One super-block x (256,) float32 -> its 144 bytes."""
    L, scales, mins = [0] * 256, [F(0)] * 8, [F(0)] * 8
    for j in range(8):
        sub = [F(v) for v in x[32 * j : 32 * j + 32]]
        sum_x2 = F(0)
        for v in sub:
            sum_x2 += v * v
        av_x = F(np.sqrt(sum_x2 / F(32)))
        w = [av_x + F(abs(v)) for v in sub]
        L[32 * j : 32 * j + 32], scales[j], mins[j] = _make_qkx2_scalar(sub, w, 15, -1.0, 0.1, 20)
    max_scale = max([F(0)] + [s for s in scales if s > 0])
    max_min = max([F(0)] + [m for m in mins if m > 0])
    inv_scale = F(63) / max_scale if max_scale > 0 else F(0)
    inv_min = F(63) / max_min if max_min > 0 else F(0)
    sc = bytearray(12)
    ls_all, lm_all = [], []
    for j in range(8):
        ls = min(63, _nearest_int(inv_scale * scales[j]) & 0xFF)
        lm = min(63, _nearest_int(inv_min * mins[j]) & 0xFF)
        ls_all.append(ls)
        lm_all.append(lm)
        if j < 4:
            sc[j], sc[j + 4] = ls, lm
        else:
            sc[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4)
            sc[j - 4] |= (ls >> 4) << 6
            sc[j] |= (lm >> 4) << 6
    d, dmin = _f16(max_scale / F(63)), _f16(max_min / F(63))
    for j in range(8):
        dj = d * F(ls_all[j])
        if dj == 0:
            continue
        dm = dmin * F(lm_all[j])
        for i in range(32):
            L[32 * j + i] = max(0, min(15, _nearest_int((F(x[32 * j + i]) + dm) / dj)))
    qs = bytearray(128)
    for c in range(4):
        for i in range(32):
            qs[32 * c + i] = L[64 * c + i] | (L[64 * c + i + 32] << 4)
    head = np.array([max_scale / F(63), max_min / F(63)], np.float32).astype("<f2").tobytes()
    return np.frombuffer(head + bytes(sc) + bytes(qs), np.uint8)


def _make_qx_scalar(x, nmax):
    n = len(x)
    amax, peak = F(0), F(0)
    for v in x:
        if abs(v) > amax:
            amax, peak = F(abs(v)), v
    if amax < F(1e-15):
        return [0] * n, F(0)
    iscale = F(-nmax) / peak
    L = [0] * n
    sumlx = suml2 = F(0)
    for i in range(n):
        lv = max(-nmax, min(nmax - 1, _nearest_int(iscale * x[i])))
        L[i] = lv + nmax
        w = x[i] * x[i]
        sumlx += w * x[i] * F(lv)
        suml2 += w * F(lv) * F(lv)
    scale = sumlx / suml2 if suml2 else F(0)
    best = scale * sumlx
    for k in range(-9, 10):
        if k == 0:
            continue
        iscale = -(F(nmax) + F(0.1) * F(k)) / peak
        sumlx = suml2 = F(0)
        for i in range(n):
            lv = max(-nmax, min(nmax - 1, _nearest_int(iscale * x[i])))
            w = x[i] * x[i]
            sumlx += w * x[i] * F(lv)
            suml2 += w * F(lv) * F(lv)
        if suml2 > 0 and sumlx * sumlx > best * suml2:
            for i in range(n):
                L[i] = nmax + max(-nmax, min(nmax - 1, _nearest_int(iscale * x[i])))
            scale = sumlx / suml2
            best = scale * sumlx
    return L, scale


def q6_k_scalar(x):
    """One super-block x (256,) float32 -> its 210 bytes."""
    L, scales = [0] * 256, [F(0)] * 16
    max_scale, max_abs = F(0), F(0)
    for b in range(16):
        L[16 * b : 16 * b + 16], scales[b] = _make_qx_scalar(
            [F(v) for v in x[16 * b : 16 * b + 16]], 32
        )
        if abs(scales[b]) > max_abs:
            max_abs, max_scale = F(abs(scales[b])), scales[b]
    if max_abs < F(1e-15):
        return np.zeros(210, np.uint8)
    iscale = F(-128) / max_scale
    d = _f16(F(1) / iscale)
    sc = [min(127, _nearest_int(iscale * s)) for s in scales]
    for j in range(16):
        dj = d * F(sc[j])
        if dj == 0:
            continue
        for i in range(16):
            L[16 * j + i] = max(-32, min(31, _nearest_int(F(x[16 * j + i]) / dj))) + 32
    ql, qh = bytearray(128), bytearray(64)
    for h in range(2):
        for i in range(32):
            a, b, c, e = (L[128 * h + i + 32 * k] for k in range(4))
            ql[64 * h + i] = (a & 0xF) | ((c & 0xF) << 4)
            ql[64 * h + i + 32] = (b & 0xF) | ((e & 0xF) << 4)
            qh[32 * h + i] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6)
    tail = np.array([F(1) / iscale], np.float32).astype("<f2").tobytes()
    return np.frombuffer(bytes(ql) + bytes(qh) + np.array(sc, np.int8).tobytes() + tail, np.uint8)


@pytest.mark.parametrize("name,scalar", [("Q4_K", q4_k_scalar), ("Q6_K", q6_k_scalar)])
def test_k_quantizers_equal_the_scalar_port_of_llama_cpp(name, scalar, rng):
    x = k_quant_rows(rng)
    mine = quantize(x, name)
    for i, row in enumerate(x):
        expected = scalar(row)
        assert np.array_equal(mine[i], expected), (
            f"{name} super-block {i}: bytes differ at {np.flatnonzero(mine[i] != expected)[:8]}"
        )


# RMS error of dequantize(quantize(w)) over N(0, 1) values: llama.cpp's reference
# quantizers give about Q8_0 0.0054, Q6_K 0.018, Q5_1 0.038, Q5_0 0.043, Q4_K 0.071,
# Q4_1 0.078, Q4_0 0.086; the bounds leave 10% above those
RMS_BOUND = {
    "Q8_0": 0.006,
    "Q6_K": 0.02,
    "Q5_1": 0.042,
    "Q5_0": 0.048,
    "Q4_K": 0.079,
    "Q4_1": 0.086,
    "Q4_0": 0.095,
}


@pytest.mark.parametrize("name", QUANTIZERS)
def test_round_trip_error_is_the_formats(name, rng):
    w = rng.standard_normal((33, 512)).astype(np.float32)
    back = dequantize(quantize(w, name), name)
    err = back - w
    rms = float(np.sqrt(np.mean(err**2)))
    assert rms < RMS_BOUND[name], f"{name}: rms error {rms:.4f}"
    assert rms > RMS_BOUND[name] / 3, f"{name}: rms error {rms:.4f} is too good to be {name}"
    # every value within one quantization step of its block's range
    fmt = FORMATS[name]
    blocks = w.reshape(-1, fmt.block_size)
    step = (blocks.max(1) - blocks.min(1)) / {8: 255, 6: 63, 5: 31, 4: 15}[int(name[1])]
    assert (np.abs(err.reshape(blocks.shape)) <= step[:, None] * 1.01).all()


def test_k_quants_beat_the_legacy_formats_of_their_width(rng):
    w = rng.standard_normal((16, 1024)).astype(np.float32)

    def rms(q):
        return np.sqrt(np.mean((dequantize(quantize(w, q), q) - w) ** 2))

    assert rms("Q4_K") < rms("Q4_1") < rms("Q4_0")
    assert rms("Q6_K") < rms("Q5_1")


@pytest.mark.parametrize("name", QUANTIZERS)
def test_zero_rows_quantize_to_zero(name):
    w = np.zeros((2, 256), np.float32)
    assert not dequantize(quantize(w, name), name).any()


def test_quantize_checks_its_input():
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize(np.zeros((2, 100), np.float32), "Q4_K")
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize(np.full((1, 32), np.nan, np.float32), "Q8_0")
    with pytest.raises(TypeError, match="float array"):
        quantize(np.zeros((1, 32), np.int32), "Q8_0")
    with pytest.raises(ValueError, match="no quantizer for Q5_K"):
        quantize(np.zeros((1, 256), np.float32), "Q5_K")
    with pytest.raises(ValueError, match="IQ2_XS is not supported"):
        quantize(np.zeros((1, 256), np.float32), "IQ2_XS")


# -- QuantizedTensor ---------------------------------------------------------------
def test_quantized_tensor_is_a_view_of_the_bytes(rng, tmp_path):
    raw = random_blocks(rng, "Q4_K", 6, 2)
    path = tmp_path / "blocks.bin"
    raw.tofile(path)
    mapped = np.memmap(path, np.uint8, mode="r")
    qw = QuantizedTensor(mapped, "q4_k", (6, 512))
    assert qw.qtype == "Q4_K" and qw.shape == (6, 512) and qw.nbytes == raw.size
    assert qw.data.shape == (6, 288) and np.shares_memory(qw.data, mapped)
    assert same_bits(qw.dequantize(), dequantize(raw, "Q4_K"))


def test_quantized_tensor_checks_bytes_and_shape(rng):
    raw = random_blocks(rng, "Q8_0", 4, 2)  # 4 rows of 64 values
    with pytest.raises(ValueError, match=r"\(4, 64\) takes 272 bytes .* got 204 bytes"):
        QuantizedTensor(raw[:3], "Q8_0", (4, 64))
    with pytest.raises(
        ValueError, match="in_features 48 is not a multiple of the Q8_0 block size 32"
    ):
        QuantizedTensor(raw, "Q8_0", (4, 48))
    with pytest.raises(ValueError, match="out_features, in_features"):
        QuantizedTensor(raw, "Q8_0", (4, 8, 8))
    with pytest.raises(ValueError, match="out_features, in_features"):
        QuantizedTensor(raw, "Q8_0", (0, 64))
    with pytest.raises(TypeError, match="uint8"):
        QuantizedTensor(raw.astype(np.float32), "Q8_0", (4, 64))
    with pytest.raises(ValueError, match="IQ2_XS is not supported"):
        QuantizedTensor(raw, "IQ2_XS", (4, 64))


# -- the reference product -----------------------------------------------------------
@pytest.mark.parametrize("name", list(FORMATS))
@pytest.mark.parametrize("lead", [(1,), (7,), (2, 3)])
def test_reference_product_is_x_times_the_decoded_matrix(name, lead, rng):
    fmt = FORMATS[name]
    in_f = 2 * fmt.block_size if fmt.block_size > 1 else 65
    # random bytes of the float types hold NaN and inf: those get random finite values
    raw = (
        quantize_floats(rng, name, 17, in_f)
        if fmt.block_size == 1
        else random_blocks(rng, name, 17, in_f // fmt.block_size)
    )
    w = dequantize(raw, name).astype(np.float64)
    x = rng.standard_normal((*lead, in_f))
    b = rng.standard_normal(17)
    y = quantized_linear_forward(x, raw, name, bias=b)
    assert y.dtype == np.float64 and y.shape == (*lead, 17)
    assert_close(y, x @ w.T + b, rtol=1e-12, atol=1e-12)
    y32 = quantized_linear_forward(x.astype(np.float32), raw, name)
    assert y32.dtype == np.float32
    assert_close(y32, x @ w.T, rtol=1e-4, atol=1e-4 * np.abs(w).max() * in_f**0.5)


def quantize_floats(rng, name, rows, n):
    """Finite random values as F32 / F16 / BF16 bytes."""
    v = rng.standard_normal((rows, n)).astype(np.float32)
    if name == "F32":
        return v.view(np.uint8)
    if name == "F16":
        return v.astype(np.float16).view(np.uint8)
    return (v.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)


def test_reference_product_decodes_in_slabs(rng, monkeypatch):
    from ferroformer.quant import reference

    raw = random_blocks(rng, "Q4_0", 37, 3)
    x = rng.standard_normal((5, 96)).astype(np.float32)
    whole = quantized_linear_forward(x, raw, "Q4_0")
    monkeypatch.setattr(reference, "_SLAB_VALUES", 96 * 8)  # 8 rows a slab, 5 slabs
    assert_close(quantized_linear_forward(x, raw, "Q4_0"), whole, rtol=1e-6, atol=1e-6)


def test_reference_product_checks_its_arguments(rng):
    raw = random_blocks(rng, "Q8_0", 4, 2)
    x = np.zeros((3, 64), np.float32)
    with pytest.raises(TypeError, match="quantized_linear_forward: x has dtype float16"):
        quantized_linear_forward(x.astype(np.float16), raw, "Q8_0")
    with pytest.raises(TypeError, match="quantized_linear_forward: qweight .* uint8"):
        quantized_linear_forward(x, raw.view(np.int8), "Q8_0")
    with pytest.raises(TypeError, match="quantized_linear_forward: bias has dtype float64"):
        quantized_linear_forward(x, raw, "Q8_0", bias=np.zeros(4))
    with pytest.raises(TypeError, match="quantized_linear_forward: x must be a numpy.ndarray"):
        quantized_linear_forward([[0.0] * 64], raw, "Q8_0")
    with pytest.raises(
        ValueError, match=r"quantized_linear_forward: .*in_features 64 .*x \(3, 32\)"
    ):
        quantized_linear_forward(x[:, :32], raw, "Q8_0")
    with pytest.raises(ValueError, match=r"quantized_linear_forward: .*bias \(5,\)"):
        quantized_linear_forward(x, raw, "Q8_0", bias=np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="quantized_linear_forward: qweight must be"):
        quantized_linear_forward(x, raw[:, :60], "Q8_0")
    with pytest.raises(ValueError, match="quantized_linear_forward: qweight must be"):
        quantized_linear_forward(x, raw.reshape(-1), "Q8_0")
    with pytest.raises(ValueError, match="IQ2_XS is not supported"):
        quantized_linear_forward(x, raw, "IQ2_XS")


# -- layers ----------------------------------------------------------------------------
def test_quantized_linear_is_linear_over_the_decoded_matrix(rng):
    lin = Linear(64, 9, rng=rng)
    lin.bias.data = rng.standard_normal(9).astype(np.float32)
    q = QuantizedLinear.from_linear(lin, "Q4_1", activations="float")
    w = q.dequantize()
    assert q.qtype == "Q4_1" and w.shape == (9, 64) and q.nbytes == 9 * 40
    x = rng.standard_normal((2, 5, 64)).astype(np.float32)
    assert_close(q(x), x @ w.T + lin.bias.data, rtol=1e-5, atol=1e-5)
    # the default, int8 activations: linear over the decoded matrix in x rounded per 32
    from ferroformer.quant.reference import int8_activations

    q.activations = "int8"
    xt = int8_activations(x.reshape(10, 64)).reshape(x.shape)
    assert_close(q(x), xt @ w.T + lin.bias.data, rtol=1e-5, atol=1e-5)
    assert relative_rms(q(x), lin(x)) < 0.1  # and Q4_1 is close to the float layer (0.04)
    assert [n for n, _ in q.named_parameters()] == ["bias"]


def test_quantized_linear_stacks_parts_of_different_types(rng):
    a = QuantizedTensor(quantize(rng.standard_normal((5, 256)), "Q4_K"), "Q4_K", (5, 256))
    b = QuantizedTensor(quantize(rng.standard_normal((3, 256)), "Q6_K"), "Q6_K", (3, 256))
    bias = rng.standard_normal(8).astype(np.float32)
    q = QuantizedLinear([a, b], bias, activations="float")
    assert q.out_features == 8 and q.qtype == "Q4_K+Q6_K"
    x = rng.standard_normal((4, 256)).astype(np.float32)
    w = np.concatenate([a.dequantize(), b.dequantize()])
    assert_close(q(x), x @ w.T + bias, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="share in_features"):
        QuantizedLinear([a, QuantizedTensor(np.zeros((1, 34), np.uint8), "Q8_0", (1, 32))])
    with pytest.raises(ValueError, match=r"bias must be \(8,\)"):
        QuantizedLinear([a, b], bias[:5])
    with pytest.raises(TypeError, match="QuantizedTensor"):
        QuantizedLinear(np.zeros((5, 144), np.uint8))


def test_quantized_layers_are_frozen(rng):
    q = QuantizedLinear.from_linear(Linear(32, 4, rng=rng), "Q8_0")
    q(np.zeros((1, 32), np.float32))
    with pytest.raises(
        RuntimeError, match="QuantizedLinear.backward: quantized weights are frozen"
    ):
        q.backward(np.zeros((1, 4), np.float32))
    emb = QuantizedEmbedding(QuantizedTensor(np.zeros((3, 34), np.uint8), "Q8_0", (3, 32)))
    with pytest.raises(
        RuntimeError, match="QuantizedEmbedding.backward: quantized weights are frozen"
    ):
        emb.backward(np.zeros((1, 32), np.float32))


def test_quantized_embedding_decodes_the_rows_it_returns(rng):
    raw = random_blocks(rng, "Q6_K", 11, 1)
    emb = QuantizedEmbedding(QuantizedTensor(raw, "Q6_K", (11, 256)))
    ids = np.array([[3, 0, 10], [3, 3, 7]])
    assert same_bits(emb(ids), dequantize(raw, "Q6_K")[ids])
    with pytest.raises(IndexError, match="id 11 is out of range for 11 embeddings"):
        emb(np.array([1, 11]))
    with pytest.raises(IndexError, match="id -1"):
        emb(np.array([-1]))
    with pytest.raises(TypeError, match="integer"):
        emb(np.array([1.0]))


SMALL = dict(vocab_size=96, max_seq_len=32, n_heads=4, n_layers=2, rng=0, backend="numpy")


def small_gpt(d=64, **kw):
    return GPT(d_model=d, **SMALL, **kw).eval()


def small_llama(d=64, **kw):
    return Llama(d_model=d, n_kv_heads=2, d_ff=2 * d, **SMALL, **kw).eval()


def decoded_twin(model, quantized):
    """``model`` with each quantized layer's float weight replaced by what its blocks decode to."""
    layers = dict(quantized.named_modules())
    state = {n: p.data for n, p in model.named_parameters()}
    for name, m in layers.items():
        if isinstance(m, QuantizedLinear):
            state[name + ".weight"] = m.dequantize()
    model.load_state_dict(state)
    return model


def relative_rms(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2)) / np.std(b))


# logits of a quantized random model against its float one, relative RMS difference
# (measured about Q8_0 0.006-0.012, Q6_K 0.03-0.04, Q4_0 and Q4_K 0.07-0.19)
LOGITS_BOUND = {"Q8_0": 0.03, "Q6_K": 0.08, "Q4_K": 0.3, "Q4_0": 0.3}


@pytest.mark.parametrize("make", [small_gpt, small_llama], ids=["gpt", "llama"])
@pytest.mark.parametrize("qtype,d", [("Q8_0", 64), ("Q4_0", 64), ("Q4_K", 256), ("Q6_K", 256)])
def test_quantized_model_logits(make, qtype, d, rng):
    ids = rng.integers(0, 96, (2, 12))
    model = make(d)
    quantized = quantize_model(make(d), qtype, activations="float")
    linears = {n for n, m in quantized.named_modules() if isinstance(m, QuantizedLinear)}
    floats = {n for n, m in quantized.named_modules() if type(m) is Linear}
    head = "head" if make is small_gpt else "lm_head"
    # every projection quantized; a tied head (GPT's) stays the embedding's float matrix
    assert len(linears) == 2 * 4 + (make is small_llama)
    assert floats == ({"head"} if make is small_gpt else set()) and (head in linears) != (
        head in floats
    )
    got = quantized(ids)
    assert relative_rms(got, model(ids)) < LOGITS_BOUND[qtype]
    # and exactly the float model over the decoded weights
    assert_close(got, decoded_twin(model, quantized)(ids), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make", [small_gpt, small_llama], ids=["gpt", "llama"])
def test_quantized_model_generates(make, rng, host_backend):
    model = quantize_model(make(), "Q8_0").to(host_backend)
    prompts = [rng.integers(0, 96, 5), rng.integers(0, 96, 3)]
    cached = model.generate(prompts, 6)
    assert cached.shape == (2, 6)
    assert np.array_equal(cached, model.generate(prompts, 6, use_cache=False))
    first = np.argmax(np.asarray(model(np.asarray(prompts[0])[None]))[0, -1])
    assert cached[0, 0] == first


def test_quantize_model_refuses_before_changing_anything():
    model = small_llama(64)
    with pytest.raises(
        ValueError,
        match=r"Q4_K needs in_features that are multiples of 256; "
        r"these layers are not: .*blocks.0.attn.qkv \(in_features 64\)",
    ):
        quantize_model(model, "Q4_K")
    assert not any(isinstance(m, QuantizedLinear) for m in model.modules())
    with pytest.raises(ValueError, match="no quantizer for Q5_K"):
        quantize_model(model, "Q5_K")
    with pytest.raises(ValueError, match="IQ2_XS is not supported"):
        quantize_model(model, "IQ2_XS")


def test_quantized_model_backward_is_refused(rng):
    model = quantize_model(small_gpt().train(), "Q8_0")
    logits = model(rng.integers(0, 96, (1, 4)))
    with pytest.raises(RuntimeError, match="frozen"):
        model.backward(np.ones_like(logits))
