"""The models' extension points: ``linear=``, ``ff=`` and ``mixer=`` factories, and
mixing layers that own their decode state inside the cache."""

import json

import numpy as np
import pytest
from devices import HOST_BACKENDS

from ferroformer import nn
from ferroformer.checkpoint import load_checkpoint, save_checkpoint
from ferroformer.generate import KVCache
from ferroformer.models import BERT, GPT, Llama, Transformer

from helpers import assert_close
from model_helpers import check_grads, small_transformer

BACKENDS = HOST_BACKENDS
PROMPTS = [[5, 9, 3, 17, 2, 44, 8], [11, 4], [7], [30, 31, 32, 33, 34, 35, 36]]

MODELS = {
    "gpt": lambda **kw: GPT(61, 48, d_model=32, n_heads=4, n_layers=3, **kw),
    "llama": lambda **kw: Llama(61, 48, d_model=48, n_heads=6, n_kv_heads=2, n_layers=3, **kw),
    "llama-tied": lambda **kw: Llama(
        61, 48, d_model=48, n_heads=6, n_kv_heads=2, n_layers=2, tie_embeddings=True, **kw
    ),
    "bert": lambda **kw: BERT(61, 32, d_model=32, n_heads=4, n_layers=3, dropout=0.0, **kw),
    "transformer": lambda **kw: small_transformer(23, 29, **kw),
    "transformer-untied": lambda **kw: small_transformer(
        23, 29, n_encoder_layers=1, n_decoder_layers=2, norm_first=True, tie_embeddings=False, **kw
    ),
}


def build(name, **kw):
    """A MODELS entry, on the numpy backend unless told otherwise."""
    return MODELS[name](**{"backend": "numpy", **kw})


def inputs(name, rng):
    """The forward arguments of a MODELS entry (a batch of 2)."""
    if name.startswith("transformer"):
        return (rng.integers(1, 23, (2, 6)), rng.integers(0, 29, (2, 5))), {}
    ids = rng.integers(0, 61, (2, 7))
    if name == "bert":
        mask = np.zeros((2, 7), bool)
        mask[1, 5:] = True
        return (ids,), {"key_padding_mask": mask}
    return (ids,), {}


def forward_backward(model, args, kwargs):
    """logits and every parameter's gradient (by name) of sum(g * logits)."""
    model.zero_grad()
    logits = model(*args, **kwargs)
    g = np.random.default_rng(5).standard_normal(logits.shape).astype(logits.dtype)
    model.backward(g)
    return logits, {n: p.grad for n, p in model.named_parameters()}


# -- linear= ----------------------------------------------------------------------------
class CountingLinear(nn.Linear):
    """A Linear that counts its forward and backward calls."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.calls = [0, 0]

    def forward(self, x):
        self.calls[0] += 1
        return super().forward(x)

    def backward(self, dy):
        self.calls[1] += 1
        return super().backward(dy)


def counting_factory(built):
    def linear(in_features, out_features, bias, *, rng, dtype, name):
        built[name] = CountingLinear(in_features, out_features, bias, rng=rng, dtype=dtype)
        return built[name]

    return linear


@pytest.mark.parametrize("name", sorted(MODELS))
def test_linear_factory_builds_every_projection(name):
    """Every Linear but a head tied to an embedding comes from the factory, under its
    own dotted name; logits and gradients are exactly the default model's."""
    built = {}
    model = build(name, linear=counting_factory(built), rng=0)
    ref = build(name, rng=0)
    tied = {id(m.weight) for _, m in model.named_modules() if isinstance(m, nn.Embedding)}
    linears = {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and id(m.weight) not in tied
    }
    assert linears and set(linears) == set(built)
    assert all(built[n] is m for n, m in linears.items())
    assert set(model.factories) == {"linear"} and ref.factories == {}
    assert model.config == ref.config
    args, kwargs = inputs(name, np.random.default_rng(0))
    logits, grads = forward_backward(model, args, kwargs)
    want, want_grads = forward_backward(ref, args, kwargs)
    np.testing.assert_array_equal(logits, want)
    assert grads.keys() == want_grads.keys()
    for n, g in grads.items():
        np.testing.assert_array_equal(g, want_grads[n], err_msg=n)
    assert all(m.calls == [1, 1] for m in built.values()), {n: m.calls for n, m in built.items()}


# -- ff= --------------------------------------------------------------------------------
class HalfFeedForward(nn.FeedForward):
    """A FeedForward whose output is halved (so that its use shows in the logits)."""

    def forward(self, x):
        return 0.5 * super().forward(x)

    def backward(self, dy):
        return super().backward(0.5 * dy)


def half_every_second(seen):
    def ff(layer, d_model, d_ff, *, name, **kw):
        seen.append((layer, name))
        if layer % 2:
            kw.pop("gelu_approximate")
            return HalfFeedForward(d_model, d_ff, kw.pop("activation"), **kw)
        return nn.make_feed_forward(layer, d_model, d_ff, name=name, **kw)

    return ff


@pytest.mark.parametrize("name", ["gpt", "llama", "bert", "transformer"])
def test_ff_factory_every_second_block(name):
    seen = []
    model = build(name, ff=half_every_second(seen), rng=0)
    stacks = (
        {"blocks": model.blocks}
        if hasattr(model, "blocks")
        else {"encoder": model.encoder, "decoder": model.decoder}
    )
    want = [(i, f"{stack}.{i}.ff") for stack, blocks in stacks.items() for i in range(len(blocks))]
    assert seen == want
    for blocks in stacks.values():
        assert [type(b.ff) for b in blocks] == [
            HalfFeedForward if i % 2 else nn.FeedForward for i in range(len(blocks))
        ]
    ref = build(name, rng=0)
    assert model.state_dict().keys() == ref.state_dict().keys()
    for n, p in model.state_dict().items():  # the same weights: a different computation
        np.testing.assert_array_equal(p, ref.state_dict()[n], err_msg=n)
    args, kwargs = inputs(name, np.random.default_rng(0))
    assert not np.allclose(model(*args, **kwargs), ref(*args, **kwargs))


@pytest.mark.parametrize("name", ["gpt", "llama"])
def test_ff_factory_gradients(name, rng):
    model = build(name, ff=half_every_second([]), dtype=np.float64, rng=0)
    check_grads(model, [rng.integers(0, 61, (2, 5))], rng, samples=4, rtol=1e-5, atol=1e-8)


# -- mixer=: a toy causal mean-pooling mixer with its own decode state ------------------
class MeanState:
    """Running sums (B, C) and counts (B, 1) of the real positions seen so far."""

    def __init__(self, total, count):
        self.total, self.count = total, count

    def nbytes(self):
        return int(self.total.nbytes + self.count.nbytes)


class CausalMean(nn.Module):
    """y_t = proj(mean of x_s over the real (unpadded) positions s <= t)."""

    def __init__(self, d_model, *, linear, rng, dtype):
        super().__init__()
        self.proj = linear(d_model, d_model, True, rng=rng, dtype=dtype, name="proj")

    def new_state(self, batch, capacity, dtype=np.float32):
        xp = self.ops.xp
        return MeanState(
            xp.zeros((batch, self.proj.in_features), dtype), xp.zeros((batch, 1), dtype)
        )

    def forward(self, x, *, key_padding_mask=None, offset=0, cache=None):
        xp = self.ops.xp
        total = count = 0
        mask = key_padding_mask
        if cache is not None:
            rows, state = cache.rows, cache.state
            start = rows.length
            mask = None if rows.mask is None else rows.mask[:, start : start + x.shape[1]]
            total, count = state.total[:, None], state.count[:, None]
        w = (
            xp.ones((*x.shape[:2], 1), x.dtype)
            if mask is None
            else (~mask)[..., None].astype(x.dtype)
        )
        s = total + xp.cumsum(x * w, axis=1)
        n = xp.maximum(count + xp.cumsum(w, axis=1), 1)
        if cache is not None:
            state.total, state.count = s[:, -1].copy(), n[:, -1].copy()
        if self.training:
            self.cache = (w, n)
        return self.proj(s / n)

    def backward(self, dy):
        w, n = self.take_cache()
        ds = self.proj.backward(dy) / n
        return w * self.ops.xp.cumsum(ds[:, ::-1], axis=1)[:, ::-1]


def mean_mixer(layer, d_model, n_heads, *, linear, rng, dtype, **kw):
    return CausalMean(d_model, linear=linear, rng=rng, dtype=dtype)


def hybrid_mixer(layer, d_model, n_heads, **kw):
    """Attention in even blocks, the mean mixer in odd ones: states of two kinds."""
    return (
        mean_mixer(layer, d_model, n_heads, **kw)
        if layer % 2
        else nn.make_self_attention(layer, d_model, n_heads, **kw)
    )


MIXERS = {"mean": mean_mixer, "hybrid": hybrid_mixer}
DECODERS = ["gpt", "llama"]


@pytest.mark.parametrize("mixer", sorted(MIXERS))
@pytest.mark.parametrize("name", DECODERS)
def test_mixer_cached_logits_match_full_forward(name, mixer):
    model = build(name, mixer=MIXERS[mixer], dtype=np.float64, rng=0).eval()
    kinds = {type(b.attn) for b in model.blocks}
    assert kinds == ({CausalMean} if mixer == "mean" else {CausalMean, nn.MultiHeadAttention})
    ids = np.random.default_rng(1).integers(0, 61, (3, 11))
    full = model(ids)
    cache = model.new_cache(3, 11)
    steps = [model(ids[:, :4], cache=cache)]
    steps += [model(ids[:, t : t + 1], cache=cache) for t in range(4, 11)]
    assert_close(np.concatenate(steps, axis=1), full, rtol=1e-10, atol=1e-10)
    states = [slot.state[0] for slot in cache.layers]
    assert [type(s) for s in states] == [
        MeanState if isinstance(b.attn, CausalMean) else nn.AttentionState for b in model.blocks
    ]
    assert cache.nbytes() == sum(s.nbytes() for s in states)


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("mixer", sorted(MIXERS))
@pytest.mark.parametrize("name", DECODERS)
def test_mixer_generates_the_same_with_and_without_cache(be, name, mixer):
    """Left-padded prompts: the cache's mask reaches the mixer, so that cached and
    recomputed decoding agree and every row decodes what it decodes alone."""
    model = build(name, mixer=MIXERS[mixer], backend=be, rng=0)
    for kw in ({}, {"temperature": 1.0, "top_k": 20, "seed": 7}):
        got = model.generate(PROMPTS, max_new_tokens=10, **kw)
        np.testing.assert_array_equal(
            got, model.generate(PROMPTS, max_new_tokens=10, use_cache=False, **kw), err_msg=str(kw)
        )
    got = model.generate(PROMPTS, max_new_tokens=10)
    for i, p in enumerate(PROMPTS):
        np.testing.assert_array_equal(
            got[i], model.generate([p], max_new_tokens=10)[0], err_msg=f"prompt {i}"
        )


@pytest.mark.parametrize("name", DECODERS)
def test_mixer_gradients(name, rng):
    model = build(name, mixer=hybrid_mixer, dtype=np.float64, rng=0)
    check_grads(model, [rng.integers(0, 61, (2, 5))], rng, samples=4, rtol=1e-5, atol=1e-8)


def test_cache_holds_any_layer_state():
    """A KVCache built straight from mixing layers gives each its own state."""
    mean = CausalMean(8, linear=nn.make_linear, rng=0, dtype=np.float32)
    attn = nn.MultiHeadAttention(8, 2, causal=True, rng=0)
    cross = nn.MultiHeadAttention(8, 2, cross=True, rng=0)
    cache = KVCache(attn.ops, [mean, attn, cross], 2, 5, pad=[0, 2])
    kinds = [type(c.state) for c in cache.layers]
    assert kinds == [MeanState, nn.AttentionState, nn.CrossAttentionState]
    assert cache.layer(1).state.k.shape == (2, 2, 5, 4) and cache.layer(2).state.k is None
    assert all(c.rows is cache for c in cache.layers)
    assert cache.nbytes() == 2 * 8 * 4 + 2 * 4 + 2 * 2 * 2 * 5 * 4 * 4


# -- factories are not config --------------------------------------------------------------
def test_factories_stay_out_of_config_and_checkpoints(tmp_path):
    built = {}
    model = GPT(
        61,
        16,
        d_model=16,
        n_heads=2,
        n_layers=1,
        linear=counting_factory(built),
        mixer=mean_mixer,
        rng=0,
    )
    assert set(model.factories) == {"linear", "mixer"}
    assert (
        json.loads(json.dumps(model.config))
        == GPT(61, 16, d_model=16, n_heads=2, n_layers=1).config
    )
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model)
    again = GPT(**model.config, linear=counting_factory({}), mixer=mean_mixer, rng=1)
    load_checkpoint(path, model=again)
    ids = np.array([[1, 2, 3]])
    np.testing.assert_array_equal(again(ids), model(ids))


@pytest.mark.parametrize("key", ["linear", "ff", "mixer"])
def test_a_factory_must_be_callable(key):
    with pytest.raises(TypeError, match=f"GPT: {key}= must be a factory"):
        GPT(61, 16, d_model=16, n_heads=2, n_layers=1, **{key: "Linear"})


@pytest.mark.parametrize("cls", [GPT, Llama, BERT, Transformer])
def test_config_keys_leave_the_factories_out(cls):
    assert not {"linear", "ff", "mixer", "backend", "dtype", "rng"} & set(cls.config_keys())


def test_from_config_takes_the_factories():
    base = GPT(61, 16, d_model=16, n_heads=2, n_layers=1, rng=0)
    built = {}
    model = GPT.from_config(base.config, rng=0, linear=counting_factory(built))
    assert model.factories == {"linear": model.factories["linear"]} and built
    ids = np.array([[1, 2, 3]])
    np.testing.assert_array_equal(model(ids), base(ids))
    with pytest.raises(TypeError, match="unknown arguments"):
        GPT.from_config(base.config, lineaar=counting_factory({}))


class ZeroAdapterLinear(nn.Linear):
    """A Linear plus a low-rank update that starts at zero (B = 0), as an adapter does."""

    def __init__(self, in_features, out_features, bias=True, *, rng=None, dtype=np.float32):
        super().__init__(in_features, out_features, bias, rng=rng, dtype=dtype)
        self.lora_a = nn.Parameter(np.full((2, in_features), 0.5, dtype))
        self.lora_b = nn.Parameter(np.zeros((out_features, 2), dtype))


@pytest.mark.parametrize("name", ["gpt", "llama", "bert"])
def test_model_init_leaves_a_factory_layers_own_parameters(name):
    """The GPT-style init draws the Linear weights (the same values as the default
    model's) and leaves what a factory adds beside them, so an adapter starts at zero."""

    def adapter(in_features, out_features, bias, *, rng, dtype, name):
        return ZeroAdapterLinear(in_features, out_features, bias, rng=rng, dtype=dtype)

    model, base = build(name, linear=adapter, rng=3), build(name, rng=3)
    params = dict(model.named_parameters())
    extra = [n for n in params if "lora_" in n]
    assert extra
    for n in extra:
        want = 0.0 if n.endswith("lora_b") else 0.5
        assert np.all(params[n].data == want), n
    for n, p in base.named_parameters():
        np.testing.assert_array_equal(params[n].data, p.data, err_msg=n)
