"""Modules whose shapes are fixed at construction (Linear, the norms, the
feed-forward activations, attention on its own heads, RoPE, QuantizedLinear)
check their input once and then call the backend's unchecked ``_op``; anything
the fast test (``Backend._ready``) does not vouch for goes through the public
op, which checks it as before. These tests pin both halves: a model's forward,
backward and cached decode make no public call of those ops, and a bad input
to a module still gets the public op's error."""

import numpy as np
import pytest
from devices import FAST_BACKENDS, HOST_BACKENDS

import ferroformer as ff
from ferroformer import nn
from ferroformer.backends import _checks
from ferroformer.generate import generate
from ferroformer.models import BERT, GPT, Llama
from ferroformer.quant import QuantizedLinear

from helpers import assert_close
from model_helpers import MODEL_KERNELS

# the public ops a module's fast path stands in for: the model kernels but for the
# ones whose arguments come from the caller (ids, targets) or the optimizer
COVERED = (
    *(k for k in MODEL_KERNELS if not k.startswith(("embedding", "cross_entropy", "adamw"))),
    "quantized_linear_forward",
)

MODELS = {
    "gpt": lambda be: GPT(61, 48, d_model=32, n_heads=4, n_layers=2, backend=be),
    "llama": lambda be: Llama(61, 48, d_model=48, n_heads=6, n_kv_heads=2, n_layers=2, backend=be),
}


@pytest.fixture
def public_calls(monkeypatch):
    """calls(ops) -> a dict op -> number of public calls made from then on."""

    def count(ops):
        seen = dict.fromkeys(COVERED, 0)
        for name in COVERED:
            method = getattr(ops, name)

            def wrapper(*a, _name=name, _method=method, **kw):
                seen[_name] += 1
                return _method(*a, **kw)

            monkeypatch.setattr(ops, name, wrapper)
        return seen

    return count


def _used(seen):
    return {k: v for k, v in seen.items() if v}


@pytest.mark.parametrize("be", HOST_BACKENDS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_train_and_decode_without_public_calls(be, name, public_calls, rng):
    model = MODELS[name](be)
    ids = rng.integers(0, 61, (2, 9))
    ref = MODELS[name]("numpy")
    ref.load_state_dict(model.state_dict())
    want = ref(ids)
    seen = public_calls(model.ops)
    logits = model(ids)
    model.backward(np.ones_like(logits))
    model.eval()
    out = generate(model, [[3, 4, 5], [7]], max_new_tokens=4)
    assert _used(seen) == {}
    assert_close(logits, want, rtol=1e-4, atol=1e-5)
    assert out.shape == (2, 4)


@pytest.mark.parametrize("be", HOST_BACKENDS)
@pytest.mark.parametrize("activation", ["gelu", "relu", "swiglu"])
def test_feed_forward_trains_without_public_calls(be, activation, public_calls, rng):
    layer = nn.FeedForward(8, 12, activation, rng=0).to(be)
    ref = nn.FeedForward(8, 12, activation, rng=0)
    x = rng.standard_normal((2, 3, 8)).astype(np.float32)
    g = rng.standard_normal((2, 3, 8)).astype(np.float32)
    want_y, want_dx = ref(x), ref.backward(g)
    seen = public_calls(layer.ops)
    y = layer(x)
    dx = layer.backward(g)
    assert _used(seen) == {}
    assert_close(y, want_y, rtol=1e-5, atol=1e-6)
    assert_close(dx, want_dx, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("be", HOST_BACKENDS)
def test_a_callers_padding_mask_goes_through_the_checked_op(be, public_calls, rng):
    model = BERT(61, 32, d_model=32, n_heads=4, n_layers=2, dropout=0.0, backend=be)
    mask = np.zeros((2, 7), bool)
    mask[1, 5:] = True
    seen = public_calls(model.ops)
    model(rng.integers(0, 61, (2, 7)), key_padding_mask=mask)
    assert seen["attention_forward"] == 2
    assert seen["linear_forward"] == seen["layernorm_forward"] == 0


@pytest.mark.parametrize("be", HOST_BACKENDS)
def test_results_near_the_memory_limit_take_the_checked_op(be, public_calls, monkeypatch, rng):
    lin = nn.Linear(8, 16, rng=0).to(be)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    seen = public_calls(lin.ops)
    lin(x)
    assert seen["linear_forward"] == 0
    monkeypatch.setattr(_checks, "ROOM_FAST", 3 * (8 + 16) * 4)
    y = lin(x)
    assert seen["linear_forward"] == 1
    assert_close(y, x @ lin.weight.data.T + lin.bias.data, rtol=1e-5, atol=1e-6)


def _raises(fn, exc, match):
    with pytest.raises(exc, match=match):
        fn()


@pytest.mark.parametrize("be", HOST_BACKENDS)
def test_bad_inputs_to_modules_get_the_public_ops_errors(be):
    ops = ff.backend(be)
    lin = nn.Linear(4, 3, rng=0).to(be)
    _raises(lambda: lin(np.ones((2, 5), np.float32)), ValueError, "linear_forward")
    _raises(lambda: lin(np.ones((2, 4), np.float64)), TypeError, "linear_forward: .* dtype")
    _raises(lambda: lin([[1.0, 2.0, 3.0, 4.0]]), TypeError, "linear_forward: x must be")
    _raises(lambda: lin(np.array(1.0, np.float32)), ValueError, "linear_forward")
    lin(np.ones((2, 4), np.float32))
    _raises(lambda: lin.backward(np.ones((2, 4), np.float32)), ValueError, "linear_backward")
    lin(np.ones((2, 4), np.float32))
    _raises(lambda: lin.backward(np.ones((3, 3), np.float32)), ValueError, "linear_backward")
    for norm, op in ((nn.LayerNorm(4), "layernorm"), (nn.RMSNorm(4), "rmsnorm")):
        norm.to(be)
        _raises(lambda: norm(np.ones((2, 3), np.float32)), ValueError, f"{op}_forward")
        _raises(lambda: norm(np.ones((2, 4), np.float16)), TypeError, f"{op}_forward")
        norm(np.ones((2, 4), np.float32))
        _raises(lambda: norm.backward(np.ones((1, 4), np.float32)), ValueError, f"{op}_backward")
    rope = nn.RotaryEmbedding(8, 16).to(be)
    _raises(lambda: rope(np.ones((1, 2, 3, 6), np.float32)), ValueError, "rope_forward")
    _raises(lambda: rope(np.ones((1, 2, 3, 8), np.float64)), TypeError, "rope_forward")
    assert ops.name == be


class Float64Linear(nn.Linear):
    """A plugged-in linear that hands back another dtype than its input's."""

    def forward(self, x):
        return np.asarray(super().forward(x), np.float64)


# the numpy backend computes in float64 too, so only the others refuse it
@pytest.mark.parametrize("be", FAST_BACKENDS)
@pytest.mark.parametrize("activation", ["gelu", "relu", "swiglu"])
def test_feed_forward_checks_what_a_plugged_in_linear_returns(be, activation):
    def linear(i, o, bias, *, rng, dtype, name):
        cls = Float64Linear if name == "fc1" else nn.Linear
        return cls(i, o, bias, rng=rng, dtype=dtype)

    ff_layer = nn.FeedForward(4, 6, activation, rng=0, linear=linear).to(be)
    x = np.ones((2, 4), np.float32)
    _raises(lambda: ff_layer(x), TypeError, f"{activation}_forward: .* has dtype float64")


def test_module_options_are_checked_at_construction():
    _raises(lambda: nn.LayerNorm(4, eps=-1.0), ValueError, "LayerNorm: eps")
    _raises(lambda: nn.RMSNorm(4, eps="small"), TypeError, "RMSNorm: eps")
    _raises(lambda: nn.FeedForward(4, 8, gelu_approximate="erf"), ValueError, "FeedForward")


@pytest.mark.parametrize("be", HOST_BACKENDS)
@pytest.mark.parametrize("activations", ["int8", "float"])
def test_quantized_linear_fast_path_matches_the_checked_op(be, activations, public_calls, rng):
    pytest.importorskip("gguf")  # the Q8_0 quantizer is gguf's (the pretrained extra)
    dense = [nn.Linear(64, n, rng=s).to(be) for s, n in ((1, 8), (2, 5))]
    parts = [QuantizedLinear.from_linear(d, "Q8_0").parts[0] for d in dense]
    bias = rng.standard_normal(13).astype(np.float32)
    layer = QuantizedLinear(parts, bias, activations=activations).to(be)
    x = rng.standard_normal((2, 3, 64)).astype(np.float32)
    ops = layer.ops
    want = np.concatenate(
        [ops.quantized_linear_forward(x, p.data, p.qtype, activations=activations) for p in parts],
        axis=-1,
    )
    seen = public_calls(ops)
    y = layer(x)
    assert seen["quantized_linear_forward"] == 0
    np.testing.assert_array_equal(y, want + bias)
    _raises(lambda: layer(x[..., :32]), ValueError, "quantized_linear_forward")
    _raises(lambda: layer(x.astype(np.float16)), TypeError, "quantized_linear_forward")
