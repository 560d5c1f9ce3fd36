"""Bad input gets a clear Python exception naming the op and the shapes,
on every backend; nothing crashes."""

from __future__ import annotations

import numpy as np
import pytest

f = np.float32


def z(*shape, dtype=f):
    return np.zeros(shape, dtype)


def test_wrong_dtype_is_type_error(backend):
    with pytest.raises(TypeError, match="softmax_forward"):
        backend.softmax_forward(z(2, 3, dtype=np.int32))
    with pytest.raises(TypeError, match="matmul"):
        backend.matmul(z(2, 3), z(3, 2, dtype=np.float16))
    with pytest.raises(TypeError, match=r"x must be a [\w.]*(ndarray|DeviceArray), got list"):
        backend.layernorm_forward([[1.0, 2.0]], z(2), z(2))
    with pytest.raises(TypeError, match="targets must hold integers"):
        backend.cross_entropy_forward(z(2, 3), z(2))
    with pytest.raises(TypeError, match="key_padding_mask must be bool"):
        backend.attention_forward(
            z(1, 1, 2, 4), z(1, 1, 2, 4), z(1, 1, 2, 4), key_padding_mask=z(1, 2)
        )


def test_rust_rejects_float64():
    import ferroformer as ff

    if "rust" not in ff.available_backends():
        pytest.skip("rust backend not built")
    with pytest.raises(TypeError, match="rust backend computes in float32"):
        ff.backend("rust").gelu_forward(np.zeros(3))


@pytest.mark.parametrize(
    "call,match",
    [
        (
            lambda o: o.matmul(z(2, 3), z(4, 5)),
            r"matmul: inner dimensions differ .*\(2, 3\).*\(4, 5\)",
        ),
        (lambda o: o.matmul(z(2, 2, 3), z(3, 3, 4)), "batch dimensions do not broadcast"),
        (lambda o: o.matmul(z(3), z(3, 1)), "at least 2 dimensions"),
        (lambda o: o.linear_forward(z(2, 3), z(4, 5)), r"linear_forward: .*x \(2, 3\), w \(4, 5\)"),
        (lambda o: o.linear_forward(z(2, 3), z(4, 3), z(3)), "bias must be"),
        (lambda o: o.linear_backward(z(2, 5), z(2, 3), z(4, 3)), "linear_backward"),
        (lambda o: o.softmax_forward(z(3), causal=True), "causal mask needs at least 2"),
        (lambda o: o.softmax_backward(z(2, 3), z(3, 2)), "softmax_backward: shapes must match"),
        (lambda o: o.layernorm_forward(z(2, 3), z(4), z(3)), r"gamma must be \(3,\)"),
        (
            lambda o: o.layernorm_backward(z(2, 3), z(2, 3), z(3), z(3), z(2)),
            "mean must have shape",
        ),
        (lambda o: o.rmsnorm_forward(z(2, 3), z(2)), "rmsnorm_forward"),
        (lambda o: o.gelu_forward(z(2), approximate="fast"), "approximate must be"),
        (lambda o: o.swiglu_forward(z(2, 3), z(3, 2)), "swiglu_forward: shapes must match"),
        (lambda o: o.cross_entropy_forward(z(2, 3), np.zeros(3, np.int64)), r"targets \(N,\)"),
        (
            lambda o: o.cross_entropy_forward(z(2, 3), np.zeros(2, np.int64), label_smoothing=2.0),
            "label_smoothing",
        ),
        (lambda o: o.embedding_forward(z(3), np.zeros(2, np.int64)), r"weight must be \(V, C\)"),
        (lambda o: o.embedding_backward(z(2, 4), np.zeros(3, np.int64), 5), "dy must be ids.shape"),
        (lambda o: o.rope_forward(z(2, 3), z(2, 1), z(2, 1)), "D even"),
        (lambda o: o.rope_forward(z(2, 4), z(3, 2), z(3, 2)), r"cos and sin must be \(T, D/2\)"),
        (lambda o: o.attention_forward(z(1, 3, 2, 4), z(1, 2, 2, 4), z(1, 2, 2, 4)), "multiple"),
        (
            lambda o: o.attention_forward(z(1, 2, 2, 4), z(1, 2, 2, 8), z(1, 2, 2, 8)),
            "attention_forward",
        ),
        (
            lambda o: o.attention_forward(
                z(2, 1, 2, 4), z(2, 1, 3, 4), z(2, 1, 3, 4), key_padding_mask=np.zeros((2, 2), bool)
            ),
            r"key_padding_mask must be \(B, Tk\)",
        ),
        (lambda o: o.adamw_step(z(3), z(3), z(3), z(4), lr=0.1, step=1), "adamw_step"),
        (lambda o: o.adamw_step(z(3), z(3), z(3), z(3), lr=0.1, step=0), "step counts from 1"),
        (
            lambda o: o.adamw_step(z(3, 2).T, z(2, 3), z(2, 3), z(2, 3), lr=0.1, step=1),
            "C-contiguous",
        ),
    ],
)
def test_shape_errors_are_value_errors(backend, call, match):
    with pytest.raises(ValueError, match=match):
        call(backend)


def test_out_of_range_ids_are_index_errors(backend):
    with pytest.raises(IndexError, match=r"embedding_forward: id 7 is outside \[0, 5\)"):
        backend.embedding_forward(z(5, 2), np.array([1, 7]))
    with pytest.raises(IndexError, match="id -1"):
        backend.embedding_backward(z(2, 2), np.array([1, -1]), 5)
    with pytest.raises(IndexError, match=r"target 3 at row 1 is outside \[0, 3\)"):
        backend.cross_entropy_forward(z(2, 3), np.array([0, 3]))
    with pytest.raises(IndexError, match="cross_entropy_backward"):
        backend.cross_entropy_backward(z(2, 3), np.array([-5, 0]), z(2))


def test_empty_inputs_do_not_crash(backend):
    assert backend.softmax_forward(z(0, 4)).shape == (0, 4)
    assert backend.gelu_forward(z(0)).shape == (0,)
    y, mean, _rstd = backend.layernorm_forward(z(0, 3), z(3), z(3))
    assert y.shape == (0, 3) and mean.shape == (0,)
    assert backend.matmul(z(0, 3), z(3, 2)).shape == (0, 2)
    assert backend.embedding_forward(z(4, 2), np.zeros(0, np.int64)).shape == (0, 2)
