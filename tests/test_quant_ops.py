"""The backend op ``quantized_linear_forward(x, qweight, qtype, bias=None)`` on every
backend (conftest's ``backend``: numpy, rust, the cupy backend on the CUDA stand-in,
a GPU where there is one): checked in one place (Backend), equal to the float64
product over the decoded blocks for every block type and odd sizes, and careless
input refused as test_hardening_ops.py refuses it for the other ops."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gguf")  # the Q8_0..Q5_1 quantizers are gguf's (pretrained extra)

from ferroformer.backends import base
from ferroformer.quant import FORMATS, QUANTIZERS, dequantize, quantize

from helpers import assert_close

f32 = np.float32
OP = "quantized_linear_forward"


def weight_blocks(name, out_f, in_f, seed=0):
    """(out_f, row_bytes) uint8 blocks of ``name`` for a random (out_f, in_f) matrix:
    quantized where ferroformer has a quantizer, random blocks with finite scales else."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((out_f, in_f)).astype(f32)
    if name in QUANTIZERS:
        return quantize(w, name)
    if name in ("F32", "F16"):
        return (
            np.ascontiguousarray(w.astype({"F32": "<f4", "F16": "<f2"}[name]))
            .view(np.uint8)
            .reshape(out_f, -1)
        )
    if name == "BF16":
        return (
            np.ascontiguousarray((w.view(np.uint32) >> 16).astype("<u2"))
            .view(np.uint8)
            .reshape(out_f, -1)
        )
    fmt = FORMATS[name]
    n = in_f // fmt.block_size
    raw = rng.integers(0, 256, (out_f, n, fmt.type_size), dtype=np.uint8)
    for at in fmt.half_offsets:
        h = (rng.standard_normal((out_f, n)) * 0.01).astype(np.float16)
        raw[:, :, at : at + 2] = h.view(np.uint8).reshape(out_f, n, 2)
    return raw.reshape(out_f, -1)


def expected(x, qweight, name, bias=None):
    """float64 x @ W.T (+ bias), W the float32 matrix the blocks decode to."""
    w = dequantize(qweight, name).astype(np.float64)
    y = x.astype(np.float64) @ w.T
    return y if bias is None else y + bias


def valid_case():
    x = ((np.arange(2 * 3 * 64) % 17 - 8) / 8).astype(f32).reshape(2, 3, 64)
    return x, weight_blocks("Q8_0", 5, 64), "Q8_0", (np.arange(5) / 4).astype(f32)


def test_the_op_is_checked_in_one_place(backend):
    ops = getattr(backend, "ops", backend)
    assert getattr(type(ops), OP) is getattr(base.Backend, OP)


@pytest.mark.parametrize("name", list(FORMATS))
@pytest.mark.parametrize("rows,out_f,blocks", [(1, 1, 1), (3, 7, 2), (17, 33, 1), (5, 9, 3)])
def test_every_block_type_equals_the_float64_product(backend, name, rows, out_f, blocks):
    fmt = FORMATS[name]
    in_f = blocks * max(fmt.block_size, 32) if fmt.block_size == 1 else blocks * fmt.block_size
    q = weight_blocks(name, out_f, in_f, seed=rows)
    x = np.random.default_rng(out_f).standard_normal((rows, in_f)).astype(f32)
    bias = np.random.default_rng(1).standard_normal(out_f).astype(f32)
    want = expected(x, q, name, bias)
    for qtype in (name, name.lower(), fmt.ggml_type):
        got = backend.quantized_linear_forward(x, q, qtype, bias)
        assert got.shape == (rows, out_f) and got.dtype == f32
        assert_close(got, want, rtol=1e-4, atol=1e-4 * np.sqrt(in_f), name=f"{name} {qtype}")
    got = backend.quantized_linear_forward(x, q, name)
    assert_close(got, want - bias, rtol=1e-4, atol=1e-4 * np.sqrt(in_f), name=name)


def int8_bound(x, qweight, name):
    """The derived bound of the int8 mode: sum over chunks of max|x_c| / 254 * sum |w_c|
    for every (row, output), float64."""
    w = np.abs(dequantize(qweight, name).astype(np.float64))
    rows, in_f = x.shape
    amax = np.abs(x.astype(np.float64)).reshape(rows, in_f // 32, 32).max(-1)
    wsum = w.reshape(w.shape[0], in_f // 32, 32).sum(-1)
    return amax / 254 @ wsum.T


@pytest.mark.parametrize("name", [n for n in FORMATS if FORMATS[n].block_size > 1])
@pytest.mark.parametrize("rows,out_f,blocks", [(1, 1, 1), (1, 67, 3), (3, 7, 2), (9, 33, 1)])
def test_int8_activations_equal_their_reference_within_the_bound(
    backend, name, rows, out_f, blocks
):
    """activations="int8": the product of the reference's rounded x with the decoded
    weights (to float32 summation), and within the derived bound of the float product."""
    from ferroformer.quant.reference import int8_activations

    fmt = FORMATS[name]
    in_f = blocks * fmt.block_size
    q = weight_blocks(name, out_f, in_f, seed=rows + 5)
    x = np.random.default_rng(out_f + 1).standard_normal((rows, in_f)).astype(f32)
    x[0, :32] *= 1e-3  # a chunk far smaller than the rest
    if in_f > 64:
        x[-1, 32:64] = 0.0  # an all-zero chunk
    bias = np.random.default_rng(2).standard_normal(out_f).astype(f32)
    got = backend.quantized_linear_forward(x, q, name, bias, activations="int8")
    xt = int8_activations(x)
    assert xt.dtype == f32 and not np.array_equal(xt, x)
    assert_close(
        got, expected(xt, q, name, bias), rtol=1e-5, atol=1e-5 * np.sqrt(in_f), name=f"{name} int8"
    )
    exact = expected(x, q, name, bias)
    slack = int8_bound(x, q, name) * 1.001 + 1e-4 * np.sqrt(in_f)
    assert (np.abs(np.asarray(got, np.float64) - exact) <= slack).all()


def test_int8_rounding_rules():
    from ferroformer.quant.reference import int8_activations

    x = np.zeros((3, 32), f32)
    x[0, 0], x[0, 1], x[0, 2] = 127.0, 0.5, -0.5  # d = 1: halves away from zero
    x[1, 0], x[1, 1] = 2.0**-140, 2.0**-149  # subnormal d: 1/d overflows
    x[2, 3] = np.nan
    xt = int8_activations(x)
    assert xt[0, 0] == 127 and xt[0, 1] == 1 and xt[0, 2] == -1 and (xt[0, 3:] == 0).all()
    assert np.isfinite(xt[1]).all()
    assert np.isnan(xt[2, 3]) and (xt[2, :3] == 0).all()  # a non-finite row is kept as is


def test_int8_nonfinite_rows_propagate(backend):
    x, q, name, bias = valid_case()
    x = x.reshape(6, 64).copy()
    x[1, 5], x[3, 40] = np.nan, np.inf
    got = np.asarray(backend.quantized_linear_forward(x, q, name, bias, activations="int8"))
    want = expected(x, q, name, bias)
    assert np.isnan(got[1]).all() and np.array_equal(np.isnan(got), np.isnan(want))
    assert np.array_equal(np.isinf(got), np.isinf(want))
    with pytest.raises(ValueError, match=rf"{OP}: activations must be"):
        backend.quantized_linear_forward(x, q, name, bias, activations="int4")


def test_leading_dims_and_layouts(backend):
    x, q, name, bias = valid_case()
    want = expected(x, q, name, bias)
    got = backend.quantized_linear_forward(x, q, name, bias)
    assert got.shape == (2, 3, 5)
    assert_close(got, want, rtol=1e-5, atol=1e-5)
    strided = np.zeros((2, 3, 128), f32)[..., ::2]
    strided[...] = x
    fortran = np.asfortranarray(x)
    ro = x.copy()
    ro.flags.writeable = False
    for layout in (strided, fortran, ro, x[::-1][::-1]):
        assert_close(
            backend.quantized_linear_forward(layout, q, name, bias), want, rtol=1e-5, atol=1e-5
        )
    empty = backend.quantized_linear_forward(np.zeros((0, 64), f32), q, name, bias)
    assert empty.shape == (0, 5)


def test_float64_on_the_numpy_backend(ref):
    x, q, name, bias = valid_case()
    got = ref.quantized_linear_forward(x.astype(np.float64), q, name, bias.astype(np.float64))
    assert got.dtype == np.float64
    assert_close(got, expected(x, q, name, bias), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("which", ["x", "qweight", "bias"])
def test_non_arrays_are_type_errors(backend, which):
    for bad in ([[1.0]], 1.5, 3, True, "x", np.float32(1.0)) + ((None,) if which != "bias" else ()):
        x, q, name, bias = valid_case()
        args = {"x": x, "qweight": q, "bias": bias}
        args[which] = bad
        with pytest.raises(TypeError, match=rf"{OP}: {which} must be"):
            backend.quantized_linear_forward(args["x"], args["qweight"], name, args["bias"])


def test_wrong_dtypes_are_type_errors(backend):
    x, q, name, bias = valid_case()
    for dt in (np.int32, np.complex64, np.bool_, f32(0).dtype.newbyteorder()):
        with pytest.raises(TypeError, match=rf"{OP}: x"):
            backend.quantized_linear_forward(x.astype(dt), q, name, bias)
    for dt in (np.int8, np.uint16, f32):
        with pytest.raises(TypeError, match=rf"{OP}: qweight"):
            backend.quantized_linear_forward(x, q.astype(dt), name, bias)
    for dt in (np.int32, np.float16 if backend.name == "numpy" else np.float64):
        with pytest.raises(TypeError, match=rf"{OP}: bias"):
            backend.quantized_linear_forward(x, q, name, bias.astype(dt))


def test_unknown_or_unsupported_types_are_refused_by_name(backend):
    x, q, _, bias = valid_case()
    for bad in ("Q2_K", "IQ4_NL", "q9", "TQ1_0"):
        with pytest.raises(
            ValueError,
            match=rf"{OP}: quantized type {bad.upper()} is not "
            "supported",
        ):
            backend.quantized_linear_forward(x, q, bad, bias)
    with pytest.raises(ValueError, match=rf"{OP}: quantized type .*Q2_K.* is not supported"):
        backend.quantized_linear_forward(x, q, 10, bias)  # GGML type 10 is Q2_K
    for bad in (None, 1.5, True, b"Q8_0", ["Q8_0"]):
        with pytest.raises(TypeError, match=rf"{OP}: qtype must be"):
            backend.quantized_linear_forward(x, q, bad, bias)


@pytest.mark.parametrize(
    "which,shape,match",
    [
        ("x", (2, 3, 63), r"in = 64"),
        ("x", (), r"x \(\)"),
        ("x", (64, 1), r"in = 64"),
        ("qweight", (5, 33), r"whole Q8_0 blocks \(34 bytes"),
        ("qweight", (5,), "qweight"),
        ("qweight", (5, 34, 1), "qweight"),
        ("qweight", (5, 102), "in = 96"),
        ("bias", (4,), r"bias must be \(out,\)"),
        ("bias", (5, 1), r"bias must be \(out,\)"),
    ],
)
def test_shapes_that_do_not_fit_are_value_errors(backend, which, shape, match):
    x, q, name, bias = valid_case()
    args = {"x": x, "qweight": q, "bias": bias}
    args[which] = np.zeros(shape, args[which].dtype)
    with pytest.raises(ValueError, match=rf"{OP}: ") as info:
        backend.quantized_linear_forward(args["x"], args["qweight"], name, args["bias"])
    assert info.match(match)
    assert str(shape) in str(info.value)


def test_results_past_memory_are_refused_before_allocating(host_backend):
    _, q, name, _ = valid_case()
    x = np.broadcast_to(np.zeros(64, f32), (2**36, 64))  # a view: 256 bytes for 16 TiB
    with pytest.raises(ValueError, match=rf"{OP}: the call needs .* GiB"):
        host_backend.quantized_linear_forward(x, q, name)


def test_messages_are_the_same_on_every_backend():
    from devices import BACKENDS, make_backend

    messages = set()
    for n in BACKENDS:
        if n == "cupy":
            continue
        x, q, name, bias = valid_case()
        with pytest.raises(ValueError) as info:
            make_backend(n).quantized_linear_forward(x[..., :63], q, name, bias)
        messages.add(str(info.value))
    assert len(messages) == 1, messages
