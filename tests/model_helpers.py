"""Helpers for the nn / model / training tests: finite-difference checks of a
module's backward (inputs and parameters), the small encoder-decoder most of
them build (and a tiny one for the file tests), and a skip for rust kernels
that have not landed yet."""

from __future__ import annotations

import numpy as np
import pytest

import ferroformer as ff

from helpers import assert_close, numerical_grad

# every native function the rust backend calls for a whole model's training step
MODEL_KERNELS = (
    "linear_forward",
    "linear_backward",
    "layernorm_forward",
    "layernorm_backward",
    "rmsnorm_forward",
    "rmsnorm_backward",
    "gelu_forward",
    "gelu_backward",
    "relu_forward",
    "relu_backward",
    "swiglu_forward",
    "swiglu_backward",
    "attention_forward",
    "attention_backward",
    "embedding_forward",
    "embedding_backward",
    "rope_forward",
    "rope_backward",
    "cross_entropy_forward",
    "cross_entropy_backward",
    "adamw_step",
)


# the encoder-decoder most model tests use; each changes what it needs
SMALL_TRANSFORMER = dict(
    d_model=32, n_heads=4, n_encoder_layers=2, n_decoder_layers=3, d_ff=64, dropout=0.0
)


def small_transformer(src_vocab: int, tgt_vocab: int, **kw):
    """A small ``Transformer``: SMALL_TRANSFORMER's sizes, each overridden by ``kw``."""
    from ferroformer.models import Transformer

    return Transformer(src_vocab, tgt_vocab, **{**SMALL_TRANSFORMER, **kw})


# the smallest encoder-decoder, for the file and checkpoint tests: one layer a side, width 8
TINY_TRANSFORMER = dict(
    d_model=8, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, backend="numpy", rng=0
)


def tiny_transformer(src_vocab: int, tgt_vocab: int, **kw):
    """A tiny ``Transformer``: TINY_TRANSFORMER's sizes, each overridden by ``kw``."""
    from ferroformer.models import Transformer

    return Transformer(src_vocab, tgt_vocab, **{**TINY_TRANSFORMER, **kw})


def rust_or_skip(kernels=MODEL_KERNELS):
    """The rust backend, or a skip naming the native kernels that are missing."""
    try:
        ops = ff.backend("rust")
    except ff.BackendUnavailable as e:
        pytest.skip(f"rust backend unavailable: {e}")
    from ferroformer import _native

    missing = [k for k in kernels if not hasattr(_native, k)]
    if missing:
        pytest.skip(f"rust kernels not merged yet: {', '.join(missing)}")
    return ops


def check_grads(
    module,
    args,
    rng,
    *,
    kwargs=None,
    wrt=(),
    samples=None,
    rtol=1e-5,
    atol=1e-7,
    backward_kwargs=None,
):
    """Checks ``module.backward`` against central differences of sum(g * forward).

    ``wrt``: the float input arrays whose gradients backward returns, in order.
    ``samples``: check this many random entries of each parameter (all when None).
    The module must be float64 on the numpy backend; dropout masks repeat because
    each forward restores the generators' states."""
    kwargs, backward_kwargs = kwargs or {}, backward_kwargs or {}
    states = module.rng_states()

    def run():
        module.set_rng_states(states)
        return module(*args, **kwargs)

    g = rng.standard_normal(run().shape)
    module.clear_cache()

    def loss():
        out = float(np.sum(g * run()))
        module.clear_cache()
        return out

    module.zero_grad()
    run()
    got = module.backward(g, **backward_kwargs)
    got = got if isinstance(got, tuple) else (got,)
    for i, x in enumerate(wrt):
        assert_close(got[i], numerical_grad(loss, x), rtol=rtol, atol=atol, name=f"d input {i}")
    for name, p in module.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        if samples is None:
            assert_close(
                p.grad, numerical_grad(loss, p.data), rtol=rtol, atol=atol, name=f"d {name}"
            )
        else:
            idx = rng.choice(p.data.size, size=min(samples, p.data.size), replace=False)
            assert_close(
                p.grad.reshape(-1)[idx],
                numerical_grad(loss, p.data, at=idx),
                rtol=rtol,
                atol=atol,
                name=f"d {name}",
            )
