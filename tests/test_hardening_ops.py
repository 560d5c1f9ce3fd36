"""Careless input to the ops, on every backend (conftest's ``backend``: numpy,
rust, the cupy backend on the CUDA stand-in, and on a GPU where there is one).

Every op of the contract (base.Backend) refuses what does not fit with the
exception DESIGN.md names, before it allocates anything: TypeError for a
wrong dtype or kind of value (None, a list, a Python scalar where an array
belongs), ValueError naming the op and the shapes or the value, IndexError
for ids and targets out of range, ValueError for a result larger than the
memory the process can have. Zero-size inputs give the empty (or zero)
result the math defines; read-only, unaligned, strided, negative-stride,
Fortran-order and broadcast inputs give what C-contiguous ones give. A Rust
panic comes out of the bindings as a RuntimeError naming the op."""

from __future__ import annotations

import math
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import ferroformer as ff
from ferroformer.backends import base

from helpers import assert_close

f32 = np.float32
I64 = np.int64
HUGE = 2**40  # a dimension no result of it fits in any memory

# -- valid arguments of every op --------------------------------------------------


def vals(*shape, seed=0, dtype=f32):
    """Deterministic values, multiples of 1/8 in [-2, 2)."""
    n = math.prod(shape)
    x = ((np.arange(n) * 7 + seed * 13) % 32 - 16) / 8
    return x.reshape(shape).astype(dtype)


def pos(*shape, seed=0):
    return np.abs(vals(*shape, seed=seed)) + f32(0.5)


def _norm_stats(x, centered):
    x64 = x.astype(np.float64)
    mean = x64.mean(-1) if centered else np.zeros(x.shape[:-1])
    var = ((x64 - mean[..., None]) ** 2).mean(-1) if centered else (x64 * x64).mean(-1)
    return mean.astype(f32), (1 / np.sqrt(var + 1e-5)).astype(f32)


def _attention_lse(q, k, scale=0.5):
    s = (q.astype(np.float64) @ np.swapaxes(k, -1, -2)) * scale
    return np.log(np.exp(s).sum(-1)).astype(f32)


def op_cases():
    """op -> (positional args, keyword args, names of the positional args).
    Small, deterministic, every argument of the right kind."""
    x, w = vals(3, 4), vals(5, 4, seed=1)
    x3 = vals(2, 3, 6)
    ln_mean, ln_rstd = _norm_stats(x3, True)
    _, rms_rstd = _norm_stats(x3, False)
    q, k, v = vals(1, 2, 3, 4), vals(1, 2, 5, 4, seed=1), vals(1, 2, 5, 4, seed=2)
    logits = vals(4, 6)
    lse_ce = np.log(np.exp(logits.astype(np.float64)).sum(-1)).astype(f32)
    targets = np.array([0, 5, -100, 2], I64)
    ids = np.array([[1, 0, 3], [2, 2, 1]], I64)
    cos, sin = vals(3, 2, seed=3), vals(3, 2, seed=4)
    mask = np.array([[False, True, False, False, False]])
    return {
        "matmul": ([x, vals(4, 5, seed=2)], {"trans_a": False, "trans_b": False}, "a b"),
        "linear_forward": ([x, w, vals(5, seed=3)], {}, "x w b"),
        "linear_backward": ([vals(3, 5, seed=4), x, w], {"has_bias": True}, "dy x w"),
        "softmax_forward": ([x3], {"scale": 0.5, "causal": True}, "x"),
        "softmax_backward": ([x3, pos(2, 3, 6, seed=1) / 8], {"scale": 0.5}, "dy y"),
        "layernorm_forward": ([x3, pos(6), vals(6, seed=2)], {"eps": 1e-5}, "x gamma beta"),
        "layernorm_backward": (
            [vals(2, 3, 6, seed=1), x3, pos(6), ln_mean, ln_rstd],
            {},
            "dy x gamma mean rstd",
        ),
        "rmsnorm_forward": ([x3, pos(6)], {"eps": 1e-5}, "x gamma"),
        "rmsnorm_backward": ([vals(2, 3, 6, seed=1), x3, pos(6), rms_rstd], {}, "dy x gamma rstd"),
        "gelu_forward": ([x3], {"approximate": "tanh"}, "x"),
        "gelu_backward": ([vals(2, 3, 6, seed=1), x3], {"approximate": "none"}, "dy x"),
        "relu_forward": ([x3], {}, "x"),
        "relu_backward": ([vals(2, 3, 6, seed=1), x3], {}, "dy x"),
        "silu_forward": ([x3], {}, "x"),
        "silu_backward": ([vals(2, 3, 6, seed=1), x3], {}, "dy x"),
        "swiglu_forward": ([x3, vals(2, 3, 6, seed=1)], {}, "gate up"),
        "swiglu_backward": ([vals(2, 3, 6, seed=2), x3, vals(2, 3, 6, seed=1)], {}, "dh gate up"),
        "attention_forward": (
            [q, k, v],
            {"causal": True, "scale": 0.5, "key_padding_mask": mask},
            "q k v",
        ),
        "attention_backward": (
            [vals(1, 2, 3, 4, seed=5), q, k, v, vals(1, 2, 3, 4, seed=6), _attention_lse(q, k)],
            {"scale": 0.5},
            "do q k v o lse",
        ),
        "cross_entropy_forward": ([logits, targets], {"label_smoothing": 0.1}, "logits targets"),
        "cross_entropy_backward": ([logits, targets, lse_ce], {"grad": 0.5}, "logits targets lse"),
        "embedding_forward": ([vals(4, 3), ids], {}, "weight ids"),
        "embedding_backward": ([vals(2, 3, 5), ids, 4], {}, "dy ids num_embeddings"),
        "rope_forward": ([vals(2, 3, 4), cos, sin], {}, "x cos sin"),
        "rope_backward": ([vals(2, 3, 4), cos, sin], {}, "dy cos sin"),
        "adamw_step": (
            [vals(7), vals(7, seed=1), vals(7, seed=2) / 4, pos(7) / 4],
            {"lr": 0.1, "weight_decay": 0.01, "step": 3},
            "param grad m v",
        ),
    }


OPS = sorted(op_cases())
IN_PLACE = {"adamw_step": ("param", "m", "v")}
OPTIONAL = {("linear_forward", "b")}  # None is a value of these


def case(op):
    args, kw, names = op_cases()[op]
    return [a.copy() if isinstance(a, np.ndarray) else a for a in args], dict(kw), names.split()


def run(backend, op, args, kw):
    args = [a.copy() if isinstance(a, np.ndarray) and a.flags.writeable else a for a in args]
    out = getattr(backend, op)(*args, **kw)
    if op == "adamw_step":
        return tuple(args[i] for i in (0, 2, 3))
    return out


def array_positions(op):
    args, _, names = case(op)
    return [(i, names[i]) for i, a in enumerate(args) if isinstance(a, np.ndarray)]


def test_the_contract_is_checked_in_one_place(backend):
    """No backend overrides a public op: every call goes through Backend's checks
    (the ones of _checks.py), so the backends refuse the same inputs."""
    ops = getattr(backend, "ops", backend)
    for op in OPS:
        assert getattr(type(ops), op) is getattr(base.Backend, op), f"{type(ops).__name__}.{op}"


def test_every_op_is_covered():
    public = {
        n
        for n in vars(base.Backend)
        if not n.startswith("_") and callable(getattr(base.Backend, n))
    }
    # quantized_linear_forward (raw uint8 blocks and a type name) has its cases in
    # tests/test_quant_ops.py
    assert public - {"asarray"} == set(OPS) | {"quantized_linear_forward"}


@pytest.mark.parametrize("op", OPS)
def test_valid_arguments_run(backend, ref, op):
    """The cases below spoil one argument of these; here all of them are good
    (and the backend agrees with the float64 reference on them)."""
    args, kw, _ = case(op)
    got = run(backend, op, args, kw)
    want = run(
        ref,
        op,
        [a.astype(np.float64) if isinstance(a, np.ndarray) and a.dtype == f32 else a for a in args],
        kw,
    )
    if op.startswith("cross_entropy_forward"):
        got, want = (got[0], *got[1:]), (want[0], *want[1:])
    assert_close(got, want, rtol=1e-4, atol=1e-5, name=op)


# -- wrong kinds of value and wrong dtypes ---------------------------------------------

NOT_ARRAYS = [None, [[1.0, 2.0]], 1.5, 3, True, "x", np.float32(1.0)]


@pytest.mark.parametrize("op", OPS)
def test_a_non_array_is_a_type_error(backend, op):
    for i, name in array_positions(op):
        for bad in NOT_ARRAYS:
            if bad is None and (op, name) in OPTIONAL:
                continue
            args, kw, _ = case(op)
            args[i] = bad
            with pytest.raises(TypeError, match=rf"{op}: {name} must be a \S+, got"):
                run(backend, op, args, kw)


@pytest.mark.parametrize("op", OPS)
def test_a_wrong_dtype_is_a_type_error(backend, op):
    for i, name in array_positions(op):
        args, _, _ = case(op)
        kind = args[i].dtype.kind
        wrong = (
            [np.int32, np.complex64, np.bool_]
            if kind == "f"
            else [np.float32, np.bool_]
            if kind == "i"
            else [np.uint8, np.float32]
        )
        for dtype in wrong:
            args, kw, _ = case(op)
            args[i] = args[i].astype(dtype)
            with pytest.raises(TypeError, match=rf"{op}: {name}"):
                run(backend, op, args, kw)


@pytest.mark.parametrize("op", OPS)
def test_non_native_byte_order_is_a_type_error(backend, op):
    i, name = array_positions(op)[0]
    args, kw, _ = case(op)
    args[i] = args[i].astype(args[i].dtype.newbyteorder())
    with pytest.raises(TypeError, match=rf"{op}: {name}"):
        run(backend, op, args, kw)


@pytest.mark.parametrize("op", ["key_padding_mask", "lse"])
def test_extra_arrays_of_the_wrong_kind(backend, op):
    if op == "key_padding_mask":
        for which in ("attention_forward", "attention_backward"):
            for bad, err in [
                ([[False] * 5], TypeError),
                (np.zeros((1, 5), np.uint8), TypeError),
                (np.zeros((1, 5), f32), TypeError),
                (np.zeros((1, 4), bool), ValueError),
                (np.zeros(5, bool), ValueError),
                (np.zeros((2, 5), bool), ValueError),
            ]:
                args, kw, _ = case(which)
                kw["key_padding_mask"] = bad
                with pytest.raises(err, match=rf"{which}: .*key_padding_mask"):
                    run(backend, which, args, kw)
        return
    for which, i in (("attention_backward", 5), ("cross_entropy_backward", 2)):
        for bad, err in [
            (None, TypeError),
            (np.zeros(4, np.int64), TypeError),
            (np.zeros(4, np.complex64), TypeError),
            (np.zeros(3, f32), ValueError),
            (np.zeros((1, 2, 4), f32), ValueError),
        ]:
            args, kw, _ = case(which)
            args[i] = bad
            with pytest.raises(err, match=rf"{which}: .*lse"):
                run(backend, which, args, kw)


# -- scalars ------------------------------------------------------------------------------

# (op, keyword, bad values that are TypeError, bad values that are ValueError, good values)
SCALARS = [
    ("matmul", "trans_a", [1, None, "yes", 1.0], [], [np.bool_(False)]),
    ("linear_backward", "has_bias", [1, None, "True"], [], [np.bool_(True)]),
    (
        "softmax_forward",
        "scale",
        ["1", None, 1j, [0.5], np.ones(1)],
        [math.nan, math.inf, 1e300],
        [np.float32(0.5), np.array(0.5), 1, np.int64(1)],
    ),
    ("softmax_forward", "causal", [0, "no", None], [], [np.bool_(True)]),
    ("softmax_backward", "scale", [None, "2"], [-math.inf], [2]),
    ("layernorm_forward", "eps", [None, "1e-5", True], [-1e-5, math.nan], [0, np.float64(1e-3)]),
    ("rmsnorm_forward", "eps", [None], [-1.0, math.inf], [0.0]),
    ("gelu_forward", "approximate", [None, 1, True], ["erf", "", "TANH"], ["none"]),
    ("gelu_backward", "approximate", [None], ["fast"], ["tanh"]),
    (
        "attention_forward",
        "scale",
        ["0.5", 1j, True],
        [math.nan, -math.inf, 1e39],
        [None, np.float32(0.25), 2],
    ),
    ("attention_forward", "causal", [1, None], [], [False]),
    (
        "attention_forward",
        "kv_len",
        [1.5, "2", True, [2]],
        [-1, 6, 2**63, -(2**70)],
        [np.int64(3), np.array(2), 5, 0],
    ),
    ("attention_backward", "causal", ["true"], [], [True]),
    ("attention_backward", "scale", ["1"], [math.nan], [None]),
    (
        "cross_entropy_forward",
        "ignore_index",
        [1.5, None, "x", True],
        [2**63, -(2**63) - 1],
        [np.int32(-100), np.array(-100)],
    ),
    (
        "cross_entropy_forward",
        "label_smoothing",
        [None, "0.1", 1j],
        [-0.1, 1.5, math.nan],
        [0, 1, np.float32(0.25)],
    ),
    ("cross_entropy_backward", "grad", [None, "1"], [math.nan, math.inf], [2, np.float32(0.5)]),
    ("cross_entropy_backward", "ignore_index", [None], [2**64], [np.int64(-100)]),
    ("adamw_step", "lr", [None, "0.1"], [-0.1, math.nan, math.inf], [0, np.float32(0.01)]),
    ("adamw_step", "beta1", [None], [1.0, -0.1, 1e300], [0.0, 0.5]),
    ("adamw_step", "beta2", ["0.9"], [1.5, math.nan], [0.99]),
    ("adamw_step", "eps", [None], [-1e-8, math.inf], [0.0]),
    ("adamw_step", "weight_decay", [None], [-0.01, math.nan], [0, 0.5]),
    ("adamw_step", "step", [1.5, None, "1", True], [0, -1, 2**63, 2**64], [np.int64(1), 10**6]),
]


@pytest.mark.parametrize(
    "op,key,type_errors,value_errors,good", SCALARS, ids=[f"{s[0]}-{s[1]}" for s in SCALARS]
)
def test_scalars(backend, op, key, type_errors, value_errors, good):
    for bad in type_errors:
        args, kw, _ = case(op)
        kw[key] = bad
        with pytest.raises(TypeError, match=rf"{op}: {key} must be"):
            run(backend, op, args, kw)
    for bad in value_errors:
        args, kw, _ = case(op)
        kw[key] = bad
        with pytest.raises(ValueError, match=rf"{op}: {key}"):
            run(backend, op, args, kw)
    for value in good:
        args, kw, _ = case(op)
        kw[key] = value
        run(backend, op, args, kw)


def test_scalar_kinds_give_the_same_result(backend):
    """A NumPy scalar, a 0-d array and a Python number are one value."""
    args, kw, _ = case("softmax_forward")
    want = run(backend, "softmax_forward", args, {**kw, "scale": 0.5})
    for scale in (np.float32(0.5), np.float64(0.5), np.array(0.5), np.array(0.5, f32)):
        assert_close(
            run(backend, "softmax_forward", args, {**kw, "scale": scale}), want, rtol=0, atol=0
        )
    args, kw, _ = case("attention_forward")
    want = run(backend, "attention_forward", args, {**kw, "kv_len": 4})
    for kv_len in (np.int64(4), np.int32(4), np.array(4)):
        assert_close(
            run(backend, "attention_forward", args, {**kw, "kv_len": kv_len}), want, rtol=0, atol=0
        )


def test_num_embeddings(backend):
    op = "embedding_backward"
    for bad, err in [
        (1.5, TypeError),
        (None, TypeError),
        (True, TypeError),
        ("4", TypeError),
        (-1, ValueError),
        (2**63, ValueError),
    ]:
        args, kw, _ = case(op)
        args[2] = bad
        with pytest.raises(err, match=f"{op}: num_embeddings"):
            run(backend, op, args, kw)
    args, kw, _ = case(op)
    args[2] = 3  # id 3 is there
    with pytest.raises(IndexError, match=r"embedding_backward: id 3 is outside \[0, 3\)"):
        run(backend, op, args, kw)


# -- ids and targets -------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [4, -1, 2**62, -(2**63)])
def test_ids_out_of_range_are_index_errors(backend, bad):
    for op, i in (("embedding_forward", 1), ("embedding_backward", 1)):
        args, kw, _ = case(op)
        args[i][1, 2] = bad
        with pytest.raises(IndexError, match=rf"{op}: id {bad} is outside \[0, 4\)"):
            run(backend, op, args, kw)


def test_unsigned_ids_past_int64_are_index_errors(backend):
    args, kw, _ = case("embedding_forward")
    args[1] = args[1].astype(np.uint64)
    args[1][0, 0] = 2**63 + 5  # would wrap to a negative int64
    with pytest.raises(IndexError, match=rf"id {2**63 + 5} is outside"):
        run(backend, "embedding_forward", args, kw)


@pytest.mark.parametrize("bad", [6, -1, -99, 2**62, -(2**63)])
def test_targets_out_of_range_are_index_errors(backend, bad):
    for op in ("cross_entropy_forward", "cross_entropy_backward"):
        args, kw, _ = case(op)
        args[1][1] = bad
        with pytest.raises(IndexError, match=rf"{op}: target {bad} at row 1 is outside \[0, 6\)"):
            run(backend, op, args, kw)


def test_other_integer_dtypes_give_the_same_result(backend):
    for op in (
        "embedding_forward",
        "embedding_backward",
        "cross_entropy_forward",
        "cross_entropy_backward",
    ):
        args, kw, _ = case(op)
        want = run(backend, op, args, kw)
        for dtype in (np.int32, np.int16) + ((np.uint8,) if op.startswith("embedding") else ()):
            args, kw, _ = case(op)
            args[1] = args[1].astype(dtype)
            assert_close(run(backend, op, args, kw), want, rtol=0, atol=0, name=f"{op} {dtype}")


def test_ignore_index_may_be_any_value(backend):
    args, kw, _ = case("cross_entropy_forward")
    args[1][:] = [0, 7, 7, 2]
    loss7, _ = run(backend, "cross_entropy_forward", args, {**kw, "ignore_index": 7})
    args[1][:] = [0, -3, -3, 2]
    loss3, _ = run(backend, "cross_entropy_forward", args, {**kw, "ignore_index": -3})
    assert loss7 == pytest.approx(loss3, rel=1e-6)


# -- shapes -------------------------------------------------------------------------------------

# (op, argument index, bad shape, what the message says)
BAD_SHAPES = [
    ("matmul", 0, (3,), "at least 2 dimensions"),
    ("matmul", 1, (5, 4), "inner dimensions differ"),
    ("matmul", 0, (2, 3, 5), "inner"),
    ("linear_forward", 1, (5, 3), r"x \(3, 4\), w \(5, 3\)"),
    ("linear_forward", 1, (5, 4, 1), "w"),
    ("linear_forward", 2, (4,), r"bias must be \(out,\)"),
    ("linear_forward", 0, (), "x"),
    ("layernorm_forward", 0, (2, 0), "C = 0"),
    ("rmsnorm_backward", 1, (2, 3, 0), None),
    ("linear_backward", 0, (3, 4), "dy"),
    ("linear_backward", 0, (2, 5), "dy"),
    ("linear_backward", 1, (), "x"),
    ("softmax_forward", 0, (), "at least 1 dimension"),
    ("softmax_forward", 0, (6,), "causal mask needs at least 2"),
    ("softmax_backward", 1, (2, 3, 5), "shapes must match"),
    ("softmax_backward", 0, (), "shapes must match"),
    ("layernorm_forward", 1, (5,), r"gamma must be \(6,\)"),
    ("layernorm_forward", 2, (6, 1), r"beta must be \(6,\)"),
    ("layernorm_forward", 0, (), "at least 1 dimension"),
    ("layernorm_backward", 3, (2,), "mean must have shape"),
    ("layernorm_backward", 4, (2, 3, 1), "rstd must have shape"),
    ("layernorm_backward", 0, (2, 3, 5), "shapes must match"),
    ("rmsnorm_forward", 1, (), r"gamma must be \(6,\)"),
    ("rmsnorm_backward", 3, (3,), "rstd must have shape"),
    ("gelu_backward", 0, (2, 3), "shapes must match"),
    ("relu_backward", 1, (6,), "shapes"),
    ("silu_backward", 1, (2, 3, 6, 1), "shapes"),
    ("swiglu_forward", 1, (2, 1, 6), "shapes"),
    ("swiglu_backward", 0, (3, 6), "shapes must match"),
    ("attention_forward", 0, (1, 2, 3), "4-D"),
    ("attention_forward", 1, (1, 2, 5, 3), "need q"),
    ("attention_forward", 0, (1, 3, 3, 4), "multiple"),
    ("attention_forward", 0, (1, 2, 3, 0), None),
    ("attention_forward", 0, (2, 2, 3, 4), "need q"),
    ("attention_backward", 0, (1, 2, 3, 5), "shapes must match"),
    ("attention_backward", 4, (1, 2, 2, 4), "shapes must match"),
    ("attention_backward", 5, (1, 2), r"lse must be \(B, Hq, Tq\)"),
    ("cross_entropy_forward", 0, (4,), r"logits \(N, V\)"),
    ("cross_entropy_forward", 1, (3,), r"targets \(N,\)"),
    ("cross_entropy_forward", 1, (4, 1), r"targets \(N,\)"),
    ("cross_entropy_forward", 0, (4, 0), "vocabulary is empty"),
    ("cross_entropy_backward", 2, (3,), r"lse must be \(N,\)"),
    ("embedding_forward", 0, (4,), r"weight must be \(V, C\)"),
    ("embedding_forward", 0, (4, 3, 1), r"weight must be \(V, C\)"),
    ("embedding_backward", 0, (2, 3), "dy must be ids.shape"),
    ("embedding_backward", 0, (), "dy must be ids.shape"),
    ("rope_forward", 0, (2, 3, 5), "D even"),
    ("rope_forward", 0, (4,), "D even"),
    ("rope_forward", 1, (3, 3), r"cos and sin must be \(T, D/2\)"),
    ("rope_backward", 2, (2, 2), "cos and sin"),
    ("adamw_step", 1, (6,), "one shape"),
    ("adamw_step", 3, (7, 1), "one shape"),
]


@pytest.mark.parametrize(
    "op,i,shape,match", BAD_SHAPES, ids=[f"{s[0]}-{s[1]}-{s[2]}" for s in BAD_SHAPES]
)
def test_shapes_that_do_not_fit_are_value_errors(backend, op, i, shape, match):
    args, kw, names = case(op)
    args[i] = np.zeros(shape, args[i].dtype)
    with pytest.raises(ValueError, match=rf"{op}: ") as info:
        run(backend, op, args, kw)
    if match is not None:
        assert info.match(match)
    if "(got" in str(info.value):  # the shapes named
        assert str(shape) in str(info.value) or names[i] in str(info.value)


def test_messages_are_the_same_on_every_backend(ref):
    """A ValueError or IndexError reads the same whichever backend raised it."""
    from devices import BACKENDS, make_backend

    backends = [make_backend(n) for n in BACKENDS if n != "cupy"]
    for op, i, shape, _ in BAD_SHAPES:
        messages = set()
        for b in backends:
            args, kw, _ = case(op)
            args[i] = np.zeros(shape, args[i].dtype)
            with pytest.raises(ValueError) as info:
                run(b, op, args, kw)
            messages.add(str(info.value))
        assert len(messages) == 1, (op, messages)


# -- 0-d arrays -------------------------------------------------------------------------------

ELEMENTWISE = [
    "gelu_forward",
    "gelu_backward",
    "relu_forward",
    "relu_backward",
    "silu_forward",
    "silu_backward",
    "swiglu_forward",
    "swiglu_backward",
]


@pytest.mark.parametrize("op", ELEMENTWISE)
def test_zero_dimensional_arrays_elementwise(backend, ref, op):
    args, kw, _ = case(op)
    args = [np.array(a.flat[5], a.dtype) for a in args]
    got = run(backend, op, args, kw)
    want = run(ref, op, [a.astype(np.float64) for a in args], kw)
    for g in got if isinstance(got, tuple) else (got,):
        assert np.shape(g) == ()
    assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_zero_dimensional_ids(backend, ref):
    args, kw, _ = case("embedding_forward")
    ids = np.array(2, I64)
    got = run(backend, "embedding_forward", [args[0], ids], kw)
    assert got.shape == (3,)
    assert_close(got, args[0][2], rtol=0, atol=0)
    dy = vals(3)
    got = run(backend, "embedding_backward", [dy, ids, 4], {})
    want = np.zeros((4, 3), f32)
    want[2] = dy
    assert_close(got, want, rtol=0, atol=0)


# -- zero-size dimensions ---------------------------------------------------------------------


def z(*shape, dtype=f32):
    return np.zeros(shape, dtype)


def test_zero_size_matmul_and_linear(backend):
    assert_close(backend.matmul(z(3, 0), z(0, 4)), z(3, 4), rtol=0, atol=0)  # k = 0: zeros
    assert_close(
        backend.matmul(z(0, 3), z(4, 0), trans_a=True, trans_b=True), z(3, 4), rtol=0, atol=0
    )
    assert backend.matmul(z(0, 3), z(3, 4)).shape == (0, 4)
    assert backend.matmul(z(2, 3), z(3, 0)).shape == (2, 0)
    assert backend.matmul(z(0, 2, 3), z(3, 4)).shape == (0, 2, 4)
    assert backend.matmul(z(2, 1, 2, 3), z(0, 3, 4)).shape == (2, 0, 2, 4)
    b = vals(5)
    assert_close(
        backend.linear_forward(z(3, 0), z(5, 0), b), np.broadcast_to(b, (3, 5)), rtol=0, atol=0
    )
    assert_close(backend.linear_forward(z(3, 0), z(5, 0)), z(3, 5), rtol=0, atol=0)
    assert backend.linear_forward(z(0, 4), z(5, 4), b).shape == (0, 5)
    assert backend.linear_forward(z(2, 4), z(0, 4)).shape == (2, 0)
    dx, dw, db = backend.linear_backward(z(0, 5), z(0, 4), vals(5, 4))
    assert dx.shape == (0, 4)
    assert_close((dw, db), (z(5, 4), z(5)), rtol=0, atol=0)
    dx, dw, db = backend.linear_backward(z(3, 0), vals(3, 4), z(0, 4))
    assert_close((dx, dw, db), (z(3, 4), z(0, 4), z(0)), rtol=0, atol=0)
    dx, dw, db = backend.linear_backward(vals(3, 5), z(3, 0), z(5, 0), has_bias=False)
    assert dx.shape == (3, 0) and dw.shape == (5, 0) and db is None


def test_zero_size_softmax_and_norms(backend):
    for shape in [(0, 4), (3, 0), (2, 0, 5), (0,)]:
        assert backend.softmax_forward(z(*shape)).shape == shape
        assert backend.softmax_backward(z(*shape), z(*shape)).shape == shape
        assert backend.gelu_forward(z(*shape)).shape == shape
    for shape in [(0, 4), (2, 0, 5), (3, 0), (0, 0)]:
        assert backend.softmax_forward(z(*shape), causal=True).shape == shape
    y, mean, rstd = backend.layernorm_forward(z(0, 3), z(3), z(3))
    assert y.shape == (0, 3) and mean.shape == (0,) and rstd.shape == (0,)
    dx, dg, db = backend.layernorm_backward(z(0, 3), z(0, 3), z(3), z(0), z(0))
    assert dx.shape == (0, 3)
    assert_close((dg, db), (z(3), z(3)), rtol=0, atol=0)
    dx, dg = backend.rmsnorm_backward(z(2, 0, 3), z(2, 0, 3), z(3), z(2, 0))
    assert dx.shape == (2, 0, 3)
    assert_close(dg, z(3), rtol=0, atol=0)
    # C = 0: empty rows, whose mean and rstd are undefined, are refused (no rows: fine)
    for call in (
        lambda: backend.layernorm_forward(z(2, 0), z(0), z(0)),
        lambda: backend.layernorm_backward(z(2, 0), z(2, 0), z(0), z(2), z(2)),
        lambda: backend.rmsnorm_forward(z(1, 3, 0), z(0)),
        lambda: backend.rmsnorm_backward(z(2, 0), z(2, 0), z(0), z(2)),
    ):
        with pytest.raises(ValueError, match=r"norm_\w+: the rows of x are empty \(C = 0\)"):
            call()
    y, mean, rstd = backend.layernorm_forward(z(0, 0), z(0), z(0))
    assert y.shape == (0, 0) and mean.shape == (0,) and rstd.shape == (0,)
    dx, dg = backend.rmsnorm_backward(z(0, 0), z(0, 0), z(0), z(0))
    assert dx.shape == (0, 0) and dg.shape == (0,)


def test_zero_size_elementwise_rope_and_adamw(backend):
    for op in ELEMENTWISE:
        args, kw, _ = case(op)
        out = run(backend, op, [z(2, 0, 3) for _ in args], kw)
        for o in out if isinstance(out, tuple) else (out,):
            assert o.shape == (2, 0, 3)
    assert backend.rope_forward(z(2, 0, 4), z(0, 2), z(0, 2)).shape == (2, 0, 4)
    assert backend.rope_backward(z(3, 0), z(3, 0), z(3, 0)).shape == (3, 0)
    assert backend.rope_forward(z(0, 3, 4), vals(3, 2), vals(3, 2)).shape == (0, 3, 4)
    p, g, m, v = z(0), z(0), z(0), z(0)
    backend.adamw_step(p, g, m, v, lr=0.1, step=1)
    assert p.shape == (0,)


def test_zero_size_attention(backend):
    q, k = vals(1, 2, 3, 4), z(1, 2, 0, 4)
    o, lse = backend.attention_forward(q, k, k)  # no keys: o = 0, lse = -inf
    assert_close(o, z(1, 2, 3, 4), rtol=0, atol=0)
    assert np.all(lse == -np.inf) and lse.shape == (1, 2, 3)
    dq, dk, dv = backend.attention_backward(vals(1, 2, 3, 4), q, k, k, o, lse)
    assert_close(dq, z(1, 2, 3, 4), rtol=0, atol=0)
    assert dk.shape == dv.shape == (1, 2, 0, 4)
    k = vals(1, 2, 5, 4)
    o, lse = backend.attention_forward(q, k, k, kv_len=0)  # a cache with nothing in it yet
    assert_close(o, z(1, 2, 3, 4), rtol=0, atol=0)
    assert np.all(lse == -np.inf)
    o, lse = backend.attention_forward(z(1, 2, 0, 4), k, k, causal=True)
    assert o.shape == (1, 2, 0, 4) and lse.shape == (1, 2, 0)
    o, lse = backend.attention_forward(z(0, 2, 3, 4), z(0, 1, 5, 4), z(0, 1, 5, 4))
    assert o.shape == (0, 2, 3, 4) and lse.shape == (0, 2, 3)
    # no query heads: empty outputs, zero key/value gradients
    q0 = z(1, 0, 3, 4)
    o, lse = backend.attention_forward(q0, k, k)
    assert o.shape == (1, 0, 3, 4) and lse.shape == (1, 0, 3)
    dq, dk, dv = backend.attention_backward(q0, q0, k, k, o, lse)
    assert dq.shape == (1, 0, 3, 4)
    assert_close((dk, dv), (z(1, 2, 5, 4), z(1, 2, 5, 4)), rtol=0, atol=0)


def test_zero_size_loss_and_embedding(backend):
    loss, lse = backend.cross_entropy_forward(z(0, 5), np.zeros(0, I64))
    assert loss == 0.0 and lse.shape == (0,)
    assert backend.cross_entropy_backward(z(0, 5), np.zeros(0, I64), z(0)).shape == (0, 5)
    assert backend.embedding_forward(z(4, 3), np.zeros((2, 0), I64)).shape == (2, 0, 3)
    assert backend.embedding_forward(z(0, 3), np.zeros(0, I64)).shape == (0, 3)
    assert backend.embedding_forward(z(4, 0), np.array([1, 2])).shape == (2, 0)
    assert_close(
        backend.embedding_backward(z(2, 0, 3), np.zeros((2, 0), I64), 4), z(4, 3), rtol=0, atol=0
    )
    assert backend.embedding_backward(z(0, 3), np.zeros(0, I64), 0).shape == (0, 3)
    assert backend.embedding_backward(z(2, 0), np.array([1, 0]), 3).shape == (3, 0)


# -- layouts ------------------------------------------------------------------------------------


def fortran(x):
    return np.asfortranarray(x)


def strided(x):
    buf = np.zeros((*x.shape[:-1], 2 * x.shape[-1] + 1), x.dtype)
    buf[..., 1::2] = x
    return buf[..., 1::2]


def negative(x):
    return np.flip(np.flip(x).copy())


def readonly(x):
    y = x.copy()
    y.flags.writeable = False
    return y


def unaligned(x):
    raw = np.zeros(x.nbytes + 1, np.uint8)[1:]
    y = raw.view(x.dtype).reshape(x.shape)
    y[...] = x
    assert y.size == 0 or not y.flags.aligned or x.itemsize == 1
    return y


LAYOUTS = {
    "fortran": fortran,
    "strided": strided,
    "negative": negative,
    "readonly": readonly,
    "unaligned": unaligned,
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("op", OPS)
def test_layouts_give_the_contiguous_result(backend, op, layout):
    args, kw, _ = case(op)
    want = run(backend, op, args, kw)
    for i, name in array_positions(op):
        if name in IN_PLACE.get(op, ()):
            continue
        args, kw, _ = case(op)
        if op == "adamw_step" and layout == "readonly" and hasattr(backend, "to_device"):
            continue  # OnDevice copies the arguments back, the read-only grad too
        args[i] = LAYOUTS[layout](args[i])
        assert_close(
            run(backend, op, args, kw), want, rtol=1e-6, atol=1e-7, name=f"{op} {name} {layout}"
        )
    if op.startswith("attention_forward"):  # the mask in every layout too
        args, kw, _ = case(op)
        kw["key_padding_mask"] = LAYOUTS[layout](kw["key_padding_mask"])
        assert_close(run(backend, op, args, kw), want, rtol=1e-6, atol=1e-7, name=f"mask {layout}")


@pytest.mark.parametrize(
    "op",
    [
        "rmsnorm_forward",
        "matmul",
        "linear_forward",
        "embedding_forward",
        "attention_forward",
        "swiglu_forward",
    ],
)
def test_broadcast_views_give_the_contiguous_result(backend, op):
    """Zero strides (np.broadcast_to) read as the values they stand for."""
    args, kw, _ = case(op)
    for i, _ in array_positions(op):
        args, kw, _ = case(op)
        a = args[i]
        if a.ndim == 0 or a.shape[0] == 0:
            continue
        args[i] = np.broadcast_to(a[:1], a.shape)
        want = run(backend, op, [x.copy() if j == i else x for j, x in enumerate(args)], kw)
        assert_close(run(backend, op, args, kw), want, rtol=1e-6, atol=1e-7)


def test_arrays_updated_in_place_must_be_writeable_contiguous(backend):
    if getattr(backend, "ops", backend).xp is not np:
        pytest.skip("device arrays have no read-only or unaligned layouts")
    for i, name in ((0, "param"), (2, "m"), (3, "v")):
        for layout in ("readonly", "unaligned", "strided", "fortran", "negative"):
            args, kw, _ = case("adamw_step")
            if layout == "fortran":
                args = [a.reshape(7, 1).repeat(2, 1) for a in args]
            args[i] = LAYOUTS[layout](args[i])
            if args[i].flags.c_contiguous and args[i].flags.aligned and args[i].flags.writeable:
                continue  # (a Fortran-order column is C-contiguous too)
            with pytest.raises(ValueError, match=f"adamw_step: {name} must be C-contiguous"):
                backend.adamw_step(*args, **kw)


def test_arrays_updated_in_place_must_not_overlap(backend):
    if getattr(backend, "ops", backend).xp is not np:
        pytest.skip("OnDevice copies every argument to the device")
    buf = pos(21)
    p, g, m, v = buf[:7], vals(7), buf[7:14], buf[14:]
    backend.adamw_step(p, g, m, v, lr=0.1, step=1)  # one buffer, disjoint parts: fine
    for args in [(p, g, p, v), (p, p, m, v), (buf[:7], g, buf[3:10], v), (p, g, m, m)]:
        with pytest.raises(ValueError, match="adamw_step: .* share memory"):
            backend.adamw_step(*args, lr=0.1, step=1)


# -- sizes past memory ------------------------------------------------------------------------


def huge(shape, dtype=f32):
    """A read-only view standing for ``shape`` (some dimension HUGE) on one element."""
    return np.lib.stride_tricks.as_strided(
        np.zeros(1, dtype), shape, [0] * len(shape), writeable=False
    )


HUGE_CALLS = [
    ("matmul", lambda: (huge((HUGE, 4)), vals(4, 5))),
    ("matmul", lambda: (huge((HUGE, 4)), huge((4, HUGE)))),  # 2**80 results
    ("matmul", lambda: (huge((2, 1, 3, 4)), huge((1, HUGE, 4, 5)))),
    ("matmul", lambda: (huge((HUGE, 4)), z(4, 0))),  # an empty result, a huge copy of a
    ("linear_forward", lambda: (huge((HUGE, 4)), vals(5, 4))),
    ("linear_forward", lambda: (vals(3, 4), huge((HUGE, 4)))),
    ("softmax_forward", lambda: (huge((3, HUGE)),)),
    ("layernorm_forward", lambda: (huge((HUGE, 6)), pos(6), pos(6))),
    ("rmsnorm_forward", lambda: (huge((29, HUGE)), huge((HUGE,)))),
    ("gelu_forward", lambda: (huge((HUGE,)),)),
    ("swiglu_backward", lambda: (huge((HUGE,)), huge((HUGE,)), huge((HUGE,)))),
    ("embedding_forward", lambda: (vals(4, 3), huge((HUGE,), I64))),
    ("embedding_backward", lambda: (vals(2, 3), np.zeros(2, I64), 2**62)),
    ("embedding_backward", lambda: (huge((HUGE, 3)), huge((HUGE,), I64), 4)),
    ("cross_entropy_backward", lambda: (huge((HUGE, 6)), huge((HUGE,), I64), huge((HUGE,)))),
    ("attention_forward", lambda: (vals(1, 2, 3, 4), huge((1, 2, HUGE, 4)), huge((1, 2, HUGE, 4)))),
    ("rope_forward", lambda: (huge((HUGE, 3, 4)), vals(3, 2), vals(3, 2))),
]


@pytest.mark.parametrize(
    "op,make", HUGE_CALLS, ids=[f"{c[0]}-{i}" for i, c in enumerate(HUGE_CALLS)]
)
def test_results_past_memory_are_refused_before_allocating(backend, op, make):
    if getattr(backend, "ops", backend).xp is not np:
        pytest.skip("OnDevice would copy the huge view to the device first")
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=rf"{op}: .*more than"):
            getattr(backend, op)(*make())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"{peak} bytes traced before the refusal"


def test_the_memory_limit_counts_results_and_copies(backend, monkeypatch):
    ops = getattr(backend, "ops", backend)
    monkeypatch.setattr(ops, "_memory_limit", lambda: 1 << 20)
    monkeypatch.setattr(ff.backends._checks, "ROOM_FAST", 0)
    x = vals(300, 512)  # 600 KiB, contiguous: the result fits
    backend.gelu_forward(x)
    backend.relu_backward(x, x)
    with pytest.raises(
        ValueError,
        match=r"gelu_forward: the call needs 0.00195 GiB for its "
        r"result and copies, more than the 0.000977 GiB",
    ):
        backend.gelu_forward(vals(512, 1024))  # a 2 MiB result
    if ops.xp is np:  # a strided input is copied by the fast backends: counted
        with pytest.raises(ValueError, match="relu_backward: the call needs"):
            backend.relu_backward(x, strided(x))


# -- the binding boundary -------------------------------------------------------------------------


@pytest.fixture
def native():
    if "rust" not in ff.available_backends():
        pytest.skip("rust backend not built")
    from ferroformer import _native

    return _native


@pytest.mark.parametrize("in_pool", [False, True])
def test_a_rust_panic_is_a_runtime_error(native, in_pool):
    with pytest.raises(RuntimeError, match="_force_panic: internal error") as info:
        native._force_panic(in_pool)
    assert isinstance(info.value, Exception)  # not PyO3's PanicException, a BaseException
    assert "forced" in str(info.value)
    # the process goes on: the pool, the GIL and the array borrows are intact
    x = vals(300, 70)
    assert_close(
        ff.backend("rust").softmax_forward(x),
        ff.backend("numpy").softmax_forward(x),
        rtol=1e-5,
        atol=1e-6,
    )


def test_the_bindings_refuse_sizes_instead_of_panicking(native):
    with pytest.raises(ValueError, match="embedding_backward: an output of shape"):
        native.embedding_backward(z(1, 3), np.zeros(1, I64), 2**62)
    with pytest.raises(ValueError, match="must be C-contiguous and aligned"):
        native.relu_forward(unaligned(vals(5)))
    with pytest.raises(ValueError, match="must be C-contiguous"):
        native.relu_forward(strided(vals(5)))


def test_native_stub_matches_the_module(native, tmp_path):
    pytest.importorskip("mypy")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "ferroformer._native"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
