"""The native quantized product (ferroformer._native.quantized_linear_forward) against the
NumPy reference in float64, on every SIMD token this CPU has (FERROFORMER_SIMD in a
subprocess), both modes:

- float mode (the rust backend's): weights decoded bit-identical to the reference, float32
  dots; bound: float32 summation, 1e-5 * sum |x w| per output;
- int8 mode: x quantized per 32 values, ``dx = max|x| / 127``, ``|x - dx qx| <= dx / 2``, so
  ``|y - y_ref| <= sum over chunks of dx / 2 * sum |w|`` (+ float32 summation).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import ferroformer as ff
from ferroformer.quant.formats import FORMATS, block_format, dequantize
from ferroformer.quant.reference import quantized_linear_forward as reference

pytestmark = pytest.mark.skipif(
    "rust" not in ff.available_backends(), reason="needs the rust backend"
)
N = pytest.importorskip("ferroformer._native")
TYPES = [n for n, f in FORMATS.items() if f.block_size > 1]


def weight_blocks(name, out_f, in_f, seed=0):
    """Random blocks with finite f16 fields in [2^-10, 2^-6)."""
    fmt = block_format(name)
    rng = np.random.default_rng(seed)
    w = rng.integers(0, 256, (out_f * in_f // fmt.block_size, fmt.type_size), dtype=np.uint8)
    for at in fmt.half_offsets:
        h = (0x1400 | rng.integers(0, 0x1000, len(w))).astype("<u2")
        w[:, at : at + 2] = h.view(np.uint8).reshape(-1, 2)
    return w.reshape(out_f, -1)


def bounds(x, w_f, int8):
    """Per-output bound (rows, out) on |y - y_ref| for x (rows, in), w_f (out, in) float64."""
    mag = np.abs(x) @ np.abs(w_f).T
    tol = 1e-5 * mag + 1e-6
    if int8:
        dx = np.abs(x).reshape(len(x), -1, 32).max(-1) / 127.0 / 2.0  # (rows, chunks)
        wsum = np.abs(w_f).reshape(len(w_f), -1, 32).sum(-1)  # (out, chunks)
        tol = tol + 1.001 * dx @ wsum.T
    return tol


def check(name, rows, out_f, blocks, bias, int8, seed=0):
    fmt = block_format(name)
    in_f = blocks * fmt.block_size
    w = weight_blocks(name, out_f, in_f, seed)
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((rows, in_f)).astype(np.float32)
    b = rng.standard_normal(out_f).astype(np.float32) if bias else None
    got = N.quantized_linear_forward(x, w, name, b, int8)
    want = reference(x.astype(np.float64), w, name, None if b is None else b.astype(np.float64))
    tol = bounds(x.astype(np.float64), dequantize(w, name).astype(np.float64), int8)
    err = np.abs(got - want)
    assert got.shape == (rows, out_f) and got.dtype == np.float32
    assert (err <= tol).all(), (
        f"{name} int8={int8} rows {rows} out {out_f} in {in_f}: max "
        f"err {err.max():.3g}, worst err/bound {(err / tol).max():.3g}"
    )
    return got, want


@pytest.mark.parametrize("int8", [False, True])
@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize(
    "rows, out_f, blocks",
    [(1, 1, 1), (2, 3, 3), (5, 17, 1), (1, 1030, 2), (64, 33, 2), (130, 3, 1)],
)
def test_every_type_within_the_bound(name, rows, out_f, blocks, int8):
    check(name, rows, out_f, blocks, bias=rows % 2 == 1, int8=int8)


def test_int8_bound_is_tight_enough_to_fail():
    """The int8 mode really differs from the reference (else the bound test proves
    nothing), and the float mode is far closer."""
    got8, want = check("Q8_0", 4, 64, 8, bias=False, int8=True)
    got32, _ = check("Q8_0", 4, 64, 8, bias=False, int8=False)
    assert np.abs(got8 - want).max() > 10 * np.abs(got32 - want).max()


@pytest.mark.parametrize("rows", [4, 12])  # 12: the float mode's panel (GEMM) path
@pytest.mark.parametrize("int8", [False, True])
def test_nonfinite_rows_propagate_like_the_reference(int8, rows):
    w = weight_blocks("Q4_K", 7, 256)
    x = np.random.default_rng(3).standard_normal((rows, 256)).astype(np.float32)
    x[1, 5], x[2, 100], x[3, 7] = np.nan, np.inf, -np.inf
    got = N.quantized_linear_forward(x, w, "Q4_K", None, int8)
    want = reference(x.astype(np.float64), w, "Q4_K")
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    fin = np.isfinite(want)
    assert np.isfinite(got[0]).all() and fin[0].all()
    np.testing.assert_array_equal(
        np.sign(got[~fin & ~np.isnan(want)]), np.sign(want[~fin & ~np.isnan(want)])
    )


def test_read_only_mmap_weights(tmp_path):
    w = weight_blocks("Q6_K", 9, 512)
    path = tmp_path / "w.bin"
    w.tofile(path)
    mm = np.memmap(path, np.uint8, "r", shape=w.shape)
    assert not mm.flags.writeable
    x = np.random.default_rng(4).standard_normal((3, 512)).astype(np.float32)
    np.testing.assert_array_equal(
        N.quantized_linear_forward(x, mm, "Q6_K"), N.quantized_linear_forward(x, w, "Q6_K")
    )
    ops = ff.backend("rust")
    got = ops.quantized_linear_forward(x, mm, "Q6_K")
    want = reference(x.astype(np.float64), w, "Q6_K")
    assert (np.abs(got - want) <= bounds(x, dequantize(w, "Q6_K").astype(np.float64), False)).all()


def test_bad_arguments_are_refused_naming_the_op():
    w = weight_blocks("Q8_0", 3, 64)
    x = np.zeros((2, 64), np.float32)
    with pytest.raises(ValueError, match="quantized_linear_forward"):
        N.quantized_linear_forward(x[:, :32], w, "Q8_0")
    with pytest.raises(ValueError, match="quantized_linear_forward"):
        N.quantized_linear_forward(x, w[:, :30], "Q8_0")
    with pytest.raises(ValueError, match="quantized_linear_forward"):
        N.quantized_linear_forward(x, w, "Q8_0", np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="Q2_K"):
        N.quantized_linear_forward(x, w, "Q2_K")
    with pytest.raises(ValueError, match="quantized_linear_forward"):
        N.quantized_linear_forward(x.reshape(-1), w, "Q8_0")
    with pytest.raises(TypeError):
        N.quantized_linear_forward(x.astype(np.float64), w, "Q8_0")
    with pytest.raises(TypeError):
        N.quantized_linear_forward(x, w.astype(np.int8), "Q8_0")


@pytest.mark.parametrize("simd", ["portable", "avx2"])
def test_lower_simd_tokens(simd):
    """The same checks with the kernels held to a lower token (the level is read once per
    process, so in a subprocess); the Rust tests loop over every token too."""
    code = (
        f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import test_native_quant as t\n"
        "for n in t.TYPES:\n"
        "    for i8 in (False, True):\n"
        "        t.check(n, 5, 17, 2, True, i8); t.check(n, 1, 33, 1, False, i8)\n"
        "        t.check(n, 64, 5, 1, False, i8)\n"
    )
    env = dict(os.environ, FERROFORMER_SIMD=simd)
    r = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
