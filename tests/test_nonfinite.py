"""NaN and inf propagate as in the float64 NumPy reference (DESIGN.md, "Non-finite values").

Hypothesis puts NaN, +inf and -inf at random positions of the inputs; each fast backend must
give NaN exactly where the reference has NaN, the same infinity where it has one, and values
close to it elsewhere. Masked positions (causal, key padding, ignore_index) never give NaN:
a fully masked attention row is o = 0, lse = -inf, with zero gradients, on every backend.

Finite values stay within a few units, where float32 and float64 agree on which products are
0 * inf: far out in the tails the float64 reference keeps a 1e-60 that float32 rounds to 0,
and 1e-60 * inf is inf where 0 * inf is NaN.
"""

from __future__ import annotations

import numpy as np
import pytest
from devices import FAST_BACKENDS, HOST_BACKENDS
from hypothesis import given
from hypothesis import strategies as st

import ferroformer as ff

from helpers import assert_close, dims, each_backend, seeds

FAST = FAST_BACKENDS
BACKENDS = HOST_BACKENDS  # numpy: its own masked-position rules, checked in float64
SPECIALS = (np.nan, np.inf, -np.inf)

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

# Where to spoil an array: up to four (position in [0, 1), which special) pairs.
spoils = st.lists(
    st.tuples(st.floats(0, 1, exclude_max=True), st.sampled_from(SPECIALS)), max_size=4
)


def data(seed, *shape, spread=1.0):
    return spread * np.random.default_rng(seed).standard_normal(shape)


def spoil(x, where):
    """A copy of ``x`` with the specials of ``where`` written at their positions."""
    x = np.array(x, dtype=np.float64)
    flat = x.reshape(-1)
    for at, value in where:
        if flat.size:
            flat[int(at * flat.size)] = value
    return x


def assert_matches(got, want, *, rtol=1e-4, atol=1e-5, name="value"):
    """NaN where ``want`` is NaN, the same infinity where it is infinite, close elsewhere."""
    if isinstance(want, (tuple, list)):
        for i, (g, w) in enumerate(zip(got, want)):
            assert_matches(g, w, rtol=rtol, atol=atol, name=f"{name}[{i}]")
        return
    g = np.asarray(got, dtype=np.float64)
    w = np.asarray(want, dtype=np.float64)
    assert g.shape == w.shape, f"{name}: shape {g.shape} != {w.shape}"
    nan_w, nan_g = np.isnan(w), np.isnan(g)
    if not np.array_equal(nan_g, nan_w):
        i = np.argwhere(nan_g != nan_w)[0]
        raise AssertionError(
            f"{name}: NaN pattern differs at {tuple(i)}: got {g[tuple(i)]!r}, "
            f"expected {w[tuple(i)]!r} ({int((nan_g != nan_w).sum())} places)"
        )
    inf_w = np.isinf(w)
    if (
        not np.array_equal(np.where(inf_w, g, 0), np.where(inf_w, w, 0))
        or np.isinf(g[~inf_w]).any()
    ):
        i = np.argwhere((np.isinf(g) | inf_w) & (g != w))[0]
        raise AssertionError(
            f"{name}: infinities differ at {tuple(i)}: got {g[tuple(i)]!r}, "
            f"expected {w[tuple(i)]!r}"
        )
    finite = np.isfinite(w)
    assert_close(np.where(finite, g, 0), np.where(finite, w, 0), rtol=rtol, atol=atol, name=name)


def run(name, fn, *arrays):
    """``fn(ops, *arrays)`` on backend ``name`` in float32 (float64 for numpy) and on the
    float64 reference."""
    ops, ref = ff.backend(name), ff.backend("numpy")
    dtype = np.float64 if name == "numpy" else np.float32
    got = fn(
        ops,
        *(
            a.astype(dtype) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a
            for a in arrays
        ),
    )
    with np.errstate(all="ignore"):
        want = fn(ref, *arrays)
    return got, want


# -- softmax -------------------------------------------------------------------------------
@each_backend(FAST, 40)
@given(
    rows=st.integers(1, 12),
    cols=dims,
    causal=st.booleans(),
    scale=st.sampled_from([1.0, 0.25, -2.0]),
    where=spoils,
    seed=seeds,
)
def test_softmax(name, rows, cols, causal, scale, where, seed):
    x = spoil(data(seed, 2, rows, cols, spread=3.0), where)
    dy = spoil(data(seed + 1, 2, rows, cols), where[:1])
    got, want = run(name, lambda o, x: o.softmax_forward(x, scale=scale, causal=causal), x)
    assert_matches(got, want, name="y")
    y = want.astype(np.float32)
    got, want = run(
        name, lambda o, dy, y: o.softmax_backward(dy, y, scale=scale), dy, y.astype(np.float64)
    )
    assert_matches(got, want, name="dx")


@pytest.mark.parametrize("name", BACKENDS)
def test_softmax_masked_entries_stay_zero(name):
    ops = ff.backend(name)
    x = data(0, 3, 5).astype(np.float32)
    x[0, 0], x[1, 1], x[2, 0] = np.nan, np.inf, -np.inf  # row 0 sees 3 keys, row 2 all five
    with np.errstate(all="ignore"):
        y = ops.softmax_forward(x, causal=True)
    hidden = np.arange(5)[None, :] > np.arange(3)[:, None] + 2
    assert (y[hidden] == 0).all()
    assert np.isnan(y[0, :3]).all()  # a NaN row: NaN where visible
    assert np.isnan(y[1, 1]) and (y[1, [0, 2, 3]] == 0).all()  # +inf: NaN there, 0 beside
    assert np.isfinite(y[2]).all() and y[2, 0] == 0


# -- norms -----------------------------------------------------------------------------------
norm_cases = given(
    rows=st.integers(1, 8),
    c=st.integers(1, 70),
    where=spoils,
    wg=spoils,
    seed=seeds,
)


@each_backend(FAST, 40)
@norm_cases
def test_layernorm(name, rows, c, where, wg, seed):
    x = spoil(data(seed, rows, c), where)
    g, b = spoil(data(seed + 1, c), wg[:1]), spoil(data(seed + 2, c), wg[1:2])
    dy = spoil(data(seed + 3, rows, c), wg[2:])
    got, want = run(name, lambda o, x, g, b: o.layernorm_forward(x, g, b), x, g, b)
    assert_matches(got, want, rtol=1e-3, atol=1e-4, name="layernorm")
    _, mean, rstd = want
    got, want = run(
        name, lambda o, dy, x, g, m, r: o.layernorm_backward(dy, x, g, m, r), dy, x, g, mean, rstd
    )
    assert_matches(got, want, rtol=1e-3, atol=1e-3, name="layernorm_backward")


@each_backend(FAST, 40)
@norm_cases
def test_rmsnorm(name, rows, c, where, wg, seed):
    x = spoil(data(seed, rows, c), where)
    g = spoil(data(seed + 1, c), wg[:1])
    dy = spoil(data(seed + 3, rows, c), wg[1:])
    got, want = run(name, lambda o, x, g: o.rmsnorm_forward(x, g), x, g)
    assert_matches(got, want, rtol=1e-3, atol=1e-4, name="rmsnorm")
    got, want = run(name, lambda o, dy, x, g, r: o.rmsnorm_backward(dy, x, g, r), dy, x, g, want[1])
    assert_matches(got, want, rtol=1e-3, atol=1e-3, name="rmsnorm_backward")


# -- activations ---------------------------------------------------------------------------------
UNARY = [
    ("gelu", {"approximate": "tanh"}),
    ("gelu", {"approximate": "none"}),
    ("relu", {}),
    ("silu", {}),
]


@each_backend(FAST, 30)
@pytest.mark.parametrize("act,kw", UNARY)
@given(n=st.integers(1, 70), where=spoils, wd=spoils, seed=seeds)
def test_activations(name, act, kw, n, where, wd, seed):
    # every special at least once, besides the random ones
    x = np.concatenate([SPECIALS, spoil(data(seed, n, spread=1.5), where)])
    dy = np.concatenate([[1.0, -2.0, 0.5], spoil(data(seed + 1, n), wd)])
    fwd, bwd = f"{act}_forward", f"{act}_backward"
    got, want = run(name, lambda o, x: getattr(o, fwd)(x, **kw), x)
    assert_matches(got, want, name=fwd)
    got, want = run(name, lambda o, dy, x: getattr(o, bwd)(dy, x, **kw), dy, x)
    assert_matches(got, want, name=bwd)


@each_backend(FAST, 30)
@given(n=st.integers(1, 70), wg=spoils, wu=spoils, seed=seeds)
def test_swiglu(name, n, wg, wu, seed):
    gate = np.concatenate([SPECIALS, spoil(data(seed, n, spread=1.5), wg)])
    up = spoil(data(seed + 1, n + 3), wu)
    dh = spoil(data(seed + 2, n + 3), wu[:1])
    got, want = run(name, lambda o, g, u: o.swiglu_forward(g, u), gate, up)
    assert_matches(got, want, name="swiglu_forward")
    got, want = run(name, lambda o, d, g, u: o.swiglu_backward(d, g, u), dh, gate, up)
    assert_matches(got, want, name="swiglu_backward")


# -- matrix products -----------------------------------------------------------------------------
@each_backend(FAST, 40)
@given(
    m=dims,
    k=dims,
    n=dims,
    ta=st.booleans(),
    tb=st.booleans(),
    wa=spoils,
    wb=spoils,
    seed=seeds,
)
def test_matmul(name, m, k, n, ta, tb, wa, wb, seed):
    a = spoil(data(seed, *((k, m) if ta else (m, k))), wa)
    b = spoil(data(seed + 1, *((n, k) if tb else (k, n))), wb)
    got, want = run(name, lambda o, a, b: o.matmul(a, b, trans_a=ta, trans_b=tb), a, b)
    assert_matches(got, want, rtol=1e-4, atol=1e-4)


@each_backend(FAST, 40)
@given(
    rows=st.integers(1, 20),
    fin=dims,
    fout=dims,
    bias=st.booleans(),
    wx=spoils,
    ww=spoils,
    seed=seeds,
)
def test_linear(name, rows, fin, fout, bias, wx, ww, seed):
    x = spoil(data(seed, rows, fin), wx)
    w = spoil(data(seed + 1, fout, fin), ww)
    b = spoil(data(seed + 2, fout), ww[:1]) if bias else None
    dy = spoil(data(seed + 3, rows, fout), wx[:1])
    got, want = run(name, lambda o, x, w, b: o.linear_forward(x, w, b), x, w, b)
    assert_matches(got, want, rtol=1e-4, atol=1e-4, name="linear_forward")
    got, want = run(name, lambda o, dy, x, w: o.linear_backward(dy, x, w, has_bias=bias), dy, x, w)
    if not bias:
        assert got[2] is None and want[2] is None
        got, want = got[:2], want[:2]
    assert_matches(got, want, rtol=1e-4, atol=1e-4, name="linear_backward")


# -- cross-entropy --------------------------------------------------------------------------------
@each_backend(FAST, 40)
@given(
    n=st.integers(1, 10),
    vocab=dims,
    smoothing=st.sampled_from([0.0, 0.1, 1.0]),
    where=spoils,
    seed=seeds,
)
def test_cross_entropy(name, n, vocab, smoothing, where, seed):
    rng = np.random.default_rng(seed)
    logits = spoil(data(seed, n, vocab, spread=2.0), where)
    targets = rng.integers(0, vocab, n)
    targets[rng.random(n) < 0.3] = -100
    kw = {"ignore_index": -100, "label_smoothing": smoothing}
    got, want = run(name, lambda o, z: o.cross_entropy_forward(z, targets, **kw), logits)
    assert_matches(got, want, rtol=1e-4, atol=1e-5, name="cross_entropy_forward")
    lse = want[1]
    got, want = run(
        name, lambda o, z, lse: o.cross_entropy_backward(z, targets, lse, **kw), logits, lse
    )
    assert_matches(got, want, rtol=1e-4, atol=1e-5, name="cross_entropy_backward")
    assert (np.asarray(got)[targets == -100] == 0).all()  # ignored rows: exactly 0, never NaN


@pytest.mark.parametrize("name", BACKENDS)
def test_cross_entropy_minus_inf_logit_away_from_the_target(name):
    # a -inf logit (a banned token) gives a finite loss without smoothing, +inf with it
    ops = ff.backend(name)
    z = np.array([[0.0, -np.inf, 1.0], [2.0, 0.5, -np.inf]], np.float32)
    t = np.array([0, 0])
    want = (np.log(1 + np.e) + np.log(np.exp(2.0) + np.exp(0.5)) - 2.0) / 2
    with np.errstate(all="ignore"):
        loss, _ = ops.cross_entropy_forward(z, t)
        smoothed, _ = ops.cross_entropy_forward(z, t, label_smoothing=0.1)
        dz = ops.cross_entropy_backward(z, t, ops.cross_entropy_forward(z, t)[1])
    assert np.isclose(loss, want, rtol=1e-6)
    assert smoothed == np.inf
    assert np.isfinite(dz).all() and dz[0, 1] == 0 and dz[1, 2] == 0


# -- attention ----------------------------------------------------------------------------------------
def attention_inputs(seed, b, hq, hkv, tq, tk, d, masked, wq, wk, wv, wdo):
    rng = np.random.default_rng(seed)
    q = spoil(data(seed, b, hq, tq, d), wq)
    k = spoil(data(seed + 1, b, hkv, tk, d), wk)
    v = spoil(data(seed + 2, b, hkv, tk, d), wv)
    do = spoil(data(seed + 3, b, hq, tq, d), wdo)
    mask = (rng.random((b, tk)) < 0.3) if masked else None
    if masked and b > 1:
        mask[-1] = True  # a batch whose every key is padding
    return q, k, v, do, mask


@each_backend(FAST, 40)
@given(
    b=st.integers(1, 2),
    hkv=st.integers(1, 2),
    groups=st.integers(1, 2),
    tq=st.sampled_from([1, 2, 3, 5, 17, 70]),
    tk=st.integers(1, 80),
    d=st.sampled_from([8, 16, 24, 72]),
    causal=st.booleans(),
    masked=st.booleans(),
    wq=spoils,
    wk=spoils,
    wv=spoils,
    wdo=spoils,
    seed=seeds,
)
def test_attention(name, b, hkv, groups, tq, tk, d, causal, masked, wq, wk, wv, wdo, seed):
    q, k, v, do, mask = attention_inputs(
        seed, b, hkv * groups, hkv, tq, tk, d, masked, wq, wk, wv, wdo
    )
    kw = {"causal": causal, "key_padding_mask": mask}
    got, want = run(name, lambda o, q, k, v: o.attention_forward(q, k, v, **kw), q, k, v)
    assert_matches(got, want, rtol=1e-3, atol=1e-4, name="attention_forward")
    o, lse = want
    got, want = run(
        name,
        lambda ops, do, q, k, v, o, lse: ops.attention_backward(do, q, k, v, o, lse, **kw),
        do,
        q,
        k,
        v,
        o,
        lse,
    )
    assert_matches(got, want, rtol=1e-3, atol=1e-4, name="attention_backward")


@each_backend(FAST, 30)
@given(
    tq=st.sampled_from([1, 2, 4, 9]),
    kv_len=st.integers(9, 60),
    extra=st.integers(0, 300),
    d=st.sampled_from([16, 72]),
    wq=spoils,
    wk=spoils,
    wv=spoils,
    seed=seeds,
)
def test_attention_kv_cache(name, tq, kv_len, extra, d, wq, wk, wv, seed):
    # the decode path on a cache of kv_len + extra rows whose unused rows hold NaN
    q, k, v, _, mask = attention_inputs(seed, 2, 4, 2, tq, kv_len, d, True, wq, wk, wv, [])
    cap = kv_len + extra
    kc = np.full((2, 2, cap, d), np.nan)
    vc = np.full((2, 2, cap, d), np.nan)
    kc[:, :, :kv_len], vc[:, :, :kv_len] = k, v
    mc = np.ones((2, cap), bool)
    mc[:, :kv_len] = mask
    got, want = run(
        name,
        lambda o, q, k, v: o.attention_forward(
            q, k, v, causal=True, key_padding_mask=mc, kv_len=kv_len
        ),
        q,
        kc,
        vc,
    )
    assert_matches(got, want, rtol=1e-3, atol=1e-4, name="cached attention")


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("tq", [1, 3, 20, 70])
def test_attention_masked_values_change_nothing(name, tq):
    """NaN and inf in keys and values hidden by padding, and in keys the causal mask hides
    from the earlier queries: those rows stay finite; rows that see nothing give o = 0,
    lse = -inf, dq = 0, and add nothing to dk and dv."""
    ops = ff.backend(name)
    b, h, tk, d = 2, 2, 75, 24
    dt = np.float64 if name == "numpy" else np.float32
    q, k, v, do, _ = (
        x.astype(dt) if x is not None else x
        for x in attention_inputs(7, b, h, h, tq, tk, d, False, [], [], [], [])
    )
    mask = np.zeros((b, tk), bool)
    mask[0, ::4] = True
    mask[1] = True  # batch 1: every key is padding
    k[:, :, mask[0]] = np.nan
    v[0][:, mask[0]] = np.inf
    v[1] = np.nan
    future = tk - tq + 1  # query 0 sees keys [0, future); the last query all of them
    v[:, :, future:] = np.inf if tq > 1 else v[:, :, future:]
    with np.errstate(all="ignore"):
        o, lse = ops.attention_forward(q, k, v, causal=True, key_padding_mask=mask)
        dq, dk, dv = ops.attention_backward(do, q, k, v, o, lse, causal=True, key_padding_mask=mask)
    assert np.isfinite(o[0, :, 0]).all() and np.isfinite(lse[0, :, 0]).all()
    assert np.isfinite(dq[0, :, 0]).all()
    assert (o[1] == 0).all() and (lse[1] == -np.inf).all() and (dq[1] == 0).all()
    assert (dk[1] == 0).all() and (dv[1] == 0).all()
    assert (dk[0][:, mask[0]] == 0).all() and (dv[0][:, mask[0]] == 0).all()
    if tq == 1:
        for x in (o, lse, dq):
            assert np.isfinite(x[0]).all()


# -- AdamW -------------------------------------------------------------------------------------------
@each_backend(FAST, 40)
@given(
    n=st.integers(1, 70),
    wp=spoils,
    wg=spoils,
    wm=spoils,
    step=st.integers(1, 5),
    decay=st.sampled_from([0.0, 0.1]),
    seed=seeds,
)
def test_adamw(name, n, wp, wg, wm, step, decay, seed):
    p, g = spoil(data(seed, n), wp), spoil(data(seed + 1, n), wg)
    m = spoil(0.1 * data(seed + 2, n), wm[:2])
    v = np.abs(spoil(0.1 * data(seed + 3, n), wm[2:]))
    kw = {
        "lr": 1e-2,
        "beta1": 0.9,
        "beta2": 0.999,
        "eps": 1e-8,
        "weight_decay": decay,
        "step": step,
    }

    def step_once(ops, p, g, m, v):
        p, m, v = p.copy(), m.copy(), v.copy()
        ops.adamw_step(p, g, m, v, **kw)
        return p, m, v

    got, want = run(name, step_once, p, g, m, v)
    assert_matches(got, want, rtol=1e-4, atol=1e-6, name="adamw")
