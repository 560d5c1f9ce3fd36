"""ferroformer._native matmul bindings against NumPy float64."""

import numpy as np
import pytest

from ferroformer import _native

from helpers import assert_close

RNG = np.random.default_rng(0)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def ref_matmul(a, b, trans_a, trans_b):
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    if trans_a:
        a64 = np.swapaxes(a64, -1, -2)
    if trans_b:
        b64 = np.swapaxes(b64, -1, -2)
    return a64 @ b64


def stored(shape, trans):
    """The stored shape of an operand whose op() has `shape`."""
    shape = list(shape)
    if trans:
        shape[-1], shape[-2] = shape[-2], shape[-1]
    return tuple(shape)


def close_for_k(got, want, k):
    """float32 result within a tolerance that grows with the inner dimension k."""
    assert got.dtype == np.float32
    assert_close(got, want, rtol=1e-4, atol=1e-5 * max(1.0, np.sqrt(k)))


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize(
    "m,k,n", [(1, 1, 1), (7, 17, 65), (65, 257, 7), (1, 300, 513), (300, 65, 1), (130, 300, 70)]
)
def test_matmul_2d(m, k, n, trans_a, trans_b):
    a = rand(*stored((m, k), trans_a))
    b = rand(*stored((k, n), trans_b))
    got = _native.matmul(a, b, trans_a, trans_b)
    close_for_k(got, ref_matmul(a, b, trans_a, trans_b), k)


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize(
    "a_shape,b_shape",
    [
        ((3, 17, 7), (3, 7, 65)),
        ((2, 1, 17, 7), (4, 7, 9)),
        ((17, 7), (5, 7, 9)),
        ((5, 65, 7), (7, 20)),
        ((2, 3, 1, 7), (1, 3, 7, 1)),
        ((4, 2, 33, 40), (2, 40, 33)),
    ],
)
def test_matmul_broadcast(a_shape, b_shape, trans_a, trans_b):
    a = rand(*stored(a_shape, trans_a))
    b = rand(*stored(b_shape, trans_b))
    got = _native.matmul(a, b, trans_a, trans_b)
    close_for_k(got, ref_matmul(a, b, trans_a, trans_b), a_shape[-1])


def test_matmul_empty_and_k_zero():
    assert _native.matmul(rand(0, 5), rand(5, 3), False, False).shape == (0, 3)
    assert _native.matmul(rand(2, 0, 5), rand(5, 3), False, False).shape == (2, 0, 3)
    out = _native.matmul(rand(4, 0), rand(0, 3), False, False)
    assert out.shape == (4, 3) and not out.any()


def test_matmul_bad_shapes():
    with pytest.raises(ValueError, match="matmul"):
        _native.matmul(rand(2, 3), rand(4, 5), False, False)
    with pytest.raises(ValueError, match="matmul"):
        _native.matmul(rand(2, 2, 3), rand(3, 3, 4), False, False)
    with pytest.raises(ValueError, match="matmul"):
        _native.matmul(rand(3), rand(3, 4), False, False)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    "x_shape,out_f", [((1, 17), 65), ((65, 17), 7), ((2, 5, 33), 40), ((7, 1), 1)]
)
def test_linear_forward_backward(x_shape, out_f, bias):
    in_f = x_shape[-1]
    x, w = rand(*x_shape), rand(out_f, in_f)
    b = rand(out_f) if bias else None
    y = _native.linear_forward(x, w, b)
    want = x.astype(np.float64) @ w.astype(np.float64).T
    if bias:
        want = want + b
    close_for_k(y, want, in_f)

    dy = rand(*x_shape[:-1], out_f)
    dx, dw, db = _native.linear_backward(dy, x, w, bias)
    dy2 = dy.reshape(-1, out_f).astype(np.float64)
    x2 = x.reshape(-1, in_f).astype(np.float64)
    close_for_k(dx, (dy.astype(np.float64) @ w.astype(np.float64)), out_f)
    close_for_k(dw, dy2.T @ x2, dy2.shape[0])
    if bias:
        close_for_k(db, dy2.sum(axis=0), dy2.shape[0])
    else:
        assert db is None


def test_linear_bad_shapes():
    with pytest.raises(ValueError, match="linear_forward"):
        _native.linear_forward(rand(4, 3), rand(5, 4), None)
    with pytest.raises(ValueError, match="linear_forward"):
        _native.linear_forward(rand(4, 3), rand(5, 3), rand(4))
    with pytest.raises(ValueError, match="linear_backward"):
        _native.linear_backward(rand(4, 6), rand(4, 3), rand(5, 3), True)


def test_threads_agree():
    a, b = rand(300, 200), rand(200, 150)
    before = _native.get_num_threads()
    try:
        _native.set_num_threads(1)
        one = _native.matmul(a, b, False, False)
        _native.set_num_threads(2)
        two = _native.matmul(a, b, False, False)
    finally:
        _native.set_num_threads(before)
    assert_close(one, two, rtol=1e-6, atol=1e-6)
