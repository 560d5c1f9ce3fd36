"""The binding layer of ``ferroformer._native`` (rust/py/src): the multi-output
helper against the NumPy reference on both of its paths (the calling thread
and the pool), the binding's own checks reduced to reading dims while the
public ops still refuse a bad call with a ValueError naming the op, and a
signal that arrives during a call stopping the caller at once."""

from __future__ import annotations

import _thread
import functools
import operator
import signal

import numpy as np
import pytest

import ferroformer as ff

from helpers import assert_close

native = pytest.importorskip("ferroformer._native")

# one chunk of a row-wise kernel: at most this many elements run on the calling thread
SERIAL = 32 * 1024


@pytest.fixture
def rust():
    if "rust" not in ff.available_backends():
        pytest.skip("rust backend not built")
    return ff.backend("rust")


@pytest.fixture
def ref():
    return ff.backend("numpy")


def vals(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# rows x 768: one row runs on the calling thread, 64 rows (49K elements) in the pool
@pytest.mark.parametrize("rows", [1, 7, 64])
def test_norms_write_every_output(rust, ref, rows):
    assert (rows * 768 > SERIAL) == (rows == 64)
    x, dy = vals(rows, 768), vals(rows, 768, seed=1)
    g, b = vals(768, seed=2), vals(768, seed=3)
    y, mean, rstd = native.layernorm_forward(x, g, b, 1e-5)
    assert_close((y, mean, rstd), ref.layernorm_forward(x, g, b), rtol=1e-4, atol=1e-5)
    assert (y.shape, mean.shape, rstd.shape) == ((rows, 768), (rows,), (rows,))
    assert_close(
        native.layernorm_backward(dy, x, g, mean, rstd),
        ref.layernorm_backward(dy, x, g, mean, rstd),
        rtol=1e-4,
        atol=1e-4,
    )
    y, rstd = native.rmsnorm_forward(x, g, 1e-6)
    assert_close((y, rstd), ref.rmsnorm_forward(x, g), rtol=1e-4, atol=1e-5)
    assert_close(
        native.rmsnorm_backward(dy, x, g, rstd),
        ref.rmsnorm_backward(dy, x, g, rstd),
        rtol=1e-4,
        atol=1e-4,
    )


@pytest.mark.parametrize("shape", [(3, 5), (2, 129, 257)])
def test_swiglu_backward_writes_both_outputs(rust, ref, shape):
    dh, gate, up = vals(*shape), vals(*shape, seed=1), vals(*shape, seed=2)
    dgate, dup = native.swiglu_backward(dh, gate, up)
    assert dgate.shape == dup.shape == shape
    assert_close((dgate, dup), ref.swiglu_backward(dh, gate, up), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("has_bias", [True, False])
def test_linear_backward_with_and_without_the_bias_output(rust, ref, has_bias):
    dy, x, w = vals(9, 17), vals(9, 33, seed=1), vals(17, 33, seed=2)
    got = native.linear_backward(dy, x, w, has_bias)
    assert (got[2] is None) == (not has_bias)
    assert_close(got, ref.linear_backward(dy, x, w, has_bias=has_bias), rtol=1e-4, atol=1e-4)


def test_attention_outputs_and_gradients(rust, ref):
    q, k, v = vals(2, 4, 9, 16), vals(2, 2, 11, 16, seed=1), vals(2, 2, 11, 16, seed=2)
    o, lse = native.attention_forward(q, k, v, True, 0.25)
    assert_close((o, lse), ref.attention_forward(q, k, v, causal=True, scale=0.25), rtol=1e-4)
    do = vals(*q.shape, seed=3)
    assert_close(
        native.attention_backward(do, q, k, v, o, lse, True, 0.25),
        ref.attention_backward(do, q, k, v, o, lse, causal=True, scale=0.25),
        rtol=1e-3,
        atol=1e-4,
    )


def test_cross_entropy_forward_returns_the_loss_and_its_output(rust, ref):
    logits, targets = vals(6, 11), np.array([0, 3, -100, 10, 2, 2], np.int64)
    loss, lse = native.cross_entropy_forward(logits, targets, -100, 0.1)
    want_loss, want_lse = ref.cross_entropy_forward(logits, targets, label_smoothing=0.1)
    assert isinstance(loss, float)
    assert_close((loss, lse), (want_loss, want_lse), rtol=1e-5)


# -- what the binding checks, and what it leaves to the kernel and to Python ------------------


def test_the_binding_refuses_what_it_cannot_read(rust):
    with pytest.raises(ValueError, match=r"attention_forward: q must be \(B, H, T, D\)"):
        native.attention_forward(vals(4, 9, 16), vals(1, 4, 9, 16), vals(1, 4, 9, 16), False, 1.0)
    with pytest.raises(ValueError, match="layernorm_forward: x must be at least 1-D"):
        native.layernorm_forward(np.array(1.0, np.float32), vals(1), vals(1), 1e-5)
    with pytest.raises(ValueError, match=r"linear_forward: w must be \(out, in\)"):
        native.linear_forward(vals(2, 3), vals(3))
    with pytest.raises(ValueError, match="adamw_step: step must be >= 1, got -2"):
        p = vals(4)
        native.adamw_step(p, p.copy(), p.copy(), p.copy(), 1e-3, 0.9, 0.999, 1e-8, 0.0, -2)


def test_the_kernel_checks_the_sizes(rust):
    q = vals(1, 4, 9, 16)
    with pytest.raises(ValueError, match="attention_forward: need head_dim > 0 and q_heads"):
        native.attention_forward(q, vals(1, 3, 9, 16), vals(1, 3, 9, 16), False, 1.0)
    with pytest.raises(ValueError, match="attention_forward: v has"):
        native.attention_forward(q, vals(1, 2, 9, 16), vals(1, 2, 8, 16), False, 1.0)
    with pytest.raises(ValueError, match="attention_forward: kv_len 10 exceeds"):
        native.attention_forward(q, q, q, False, 1.0, None, 10)
    with pytest.raises(ValueError, match="adamw_step: m has"):
        p = vals(4)
        native.adamw_step(p, p.copy(), vals(5), p.copy(), 1e-3, 0.9, 0.999, 1e-8, 0.0, 1)
    with pytest.raises(ValueError, match="linear_forward: b has"):
        native.linear_forward(vals(2, 3), vals(4, 3), vals(3))


def test_the_public_ops_still_name_the_op_for_a_bad_shape(rust):
    # same sizes as valid arguments but other dims: only the Python layer sees these
    q = vals(1, 4, 9, 16)
    with pytest.raises(ValueError, match="attention_forward"):
        rust.attention_forward(q, vals(1, 2, 9, 16), vals(1, 2, 16, 9))
    with pytest.raises(ValueError, match="softmax_backward"):
        rust.softmax_backward(vals(2, 3), vals(3, 2))
    p = vals(4, 6)
    with pytest.raises(ValueError, match="adamw_step"):
        rust.adamw_step(p, vals(6, 4), p.copy(), p.copy(), lr=1e-3, step=1)
    with pytest.raises(ValueError, match="adamw_step"):
        rust.adamw_step(p, p.copy(), p.copy(), p.copy(), lr=1e-3, step=0)


# -- signals ------------------------------------------------------------------------------------


def test_a_signal_during_a_call_stops_a_loop_of_calls(rust):
    """SIGINT marked pending while calls run back to back from C (a ``map``, no Python
    bytecode between them, so the interpreter cannot notice it): the call that sees it
    raises KeyboardInterrupt once its kernel is done, and no later call runs."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        params = [vals(16, seed=i) for i in range(4)]
        before = [p.copy() for p in params]
        adamw = functools.partial(native.adamw_step, lr=0.1, beta1=0.9, beta2=0.99, eps=0.0)
        steps = [_thread.interrupt_main]  # marks SIGINT pending, as Ctrl-C does
        steps += [
            functools.partial(adamw, p, p + 1, p * 0, p * 0 + 1, weight_decay=0.0, step=1)
            for p in params
        ]
        with pytest.raises(KeyboardInterrupt):
            list(map(operator.methodcaller("__call__"), steps))
    finally:
        signal.signal(signal.SIGINT, previous)
    changed = [not np.array_equal(p, b) for p, b in zip(params, before)]
    assert changed == [True, False, False, False]
