"""What every model shares: a ``config`` dict that rebuilds it, ``from_config``,
the stack of blocks and the output head tied to an embedding, and the GPT-2
style initialisation used by the decoder-only models.

    model = GPT(vocab_size=256, n_layers=2, d_model=64, n_heads=4, max_seq_len=128, rng=0)
    same = GPT.from_config(model.config, rng=0)      # same architecture (and weights, same rng)
"""

from __future__ import annotations

import inspect

import numpy as np

from .. import backends
from ..nn import Linear, init
from ..nn.module import Module, ModuleList
from ._factories import DEFAULTS, split_factories

_CONFIG_TYPES = (bool, int, float, str, type(None))
_LIMIT = 1 << 24  # no size in a sane config is larger; keeps a hostile config from allocating


class Model(Module):
    """A top-level model: ``forward(...)`` returns logits, ``backward(dlogits)`` returns None."""

    config: dict

    def _setup(self, args: dict):
        """Called first by each model's __init__ with its ``locals()``: records the
        JSON arguments as ``config`` and the layer factories that are not the defaults
        as ``factories`` (a TypeError for one that is not callable); returns the
        generator the layers draw their weights from, and the keyword arguments
        every block of the model takes from it (the factories, that generator and
        the dtype) for ``block_stack``."""
        config, self.factories = split_factories(type(self).__name__, args)
        self.config = {
            k: v
            for k, v in config.items()
            if k not in ("self", "backend", "dtype", "rng", "__class__")
        }
        self._backend_request = args["backend"]
        self._dtype = np.dtype(args["dtype"])
        rng = np.random.default_rng(args["rng"])
        layers = {k: args[k] for k in ("linear", "ff", "mixer")}
        return rng, dict(layers, rng=rng, dtype=args["dtype"])

    def _finish(self) -> None:
        """Moves the freshly built (host) parameters to the requested backend."""
        self.to(backends.backend(self._backend_request))

    @classmethod
    def config_keys(cls):
        """The constructor's JSON arguments: not the backend, dtype, rng or the layer
        factories (code, see models/_factories.py)."""
        skip = {"self", "backend", "dtype", "rng", *DEFAULTS}
        return [n for n in inspect.signature(cls.__init__).parameters if n not in skip]

    @classmethod
    def validate_config(cls, config) -> dict:
        """A ValueError for unknown keys, odd types or absurd sizes (e.g. from a damaged checkpoint)."""
        if not isinstance(config, dict):
            raise ValueError(f"{cls.__name__} config must be a dict, got {type(config).__name__}")
        unknown = sorted(set(config) - set(cls.config_keys()))
        if unknown:
            raise ValueError(f"{cls.__name__} config has unknown keys {unknown}")
        for k, v in config.items():
            if not isinstance(v, _CONFIG_TYPES):
                raise ValueError(f"{cls.__name__} config {k!r} has type {type(v).__name__}")
            if (
                isinstance(v, (int, float))
                and not isinstance(v, bool)
                and not (-_LIMIT <= v <= _LIMIT)
            ):
                raise ValueError(f"{cls.__name__} config {k!r} = {v} is out of range")
        return config

    @classmethod
    def from_config(cls, config: dict, *, backend=None, dtype=np.float32, rng=None, **factories):
        """The model a ``config`` describes; ``factories`` (linear=, ff=, mixer=) as the
        constructor takes them, since a config holds none."""
        unknown = sorted(set(factories) - set(DEFAULTS))
        if unknown:
            raise TypeError(
                f"{cls.__name__}.from_config: unknown arguments {unknown}; "
                f"the layer factories are {sorted(DEFAULTS)}"
            )
        return cls(
            **cls.validate_config(dict(config)), backend=backend, dtype=dtype, rng=rng, **factories
        )


def block_stack(block, n: int, prefix: str, *args, **kwargs) -> ModuleList:
    """``n`` blocks ``block(*args, layer=i, name=f"{prefix}.{i}", **kwargs)``, built in
    order (they draw from one generator), as the model's ``prefix`` list."""
    return ModuleList(block(*args, layer=i, name=f"{prefix}.{i}", **kwargs) for i in range(n))


def backward_stack(blocks: ModuleList, dx):
    """The gradient through a stack built by ``block_stack``, last block first."""
    for blk in reversed(blocks._list):
        dx = blk.backward(dx)
    return dx


def tied_head(embedding, bias: bool, dtype) -> Linear:
    """An output head whose weight is the embedding's (V, C) matrix: a plain ``Linear``
    (whatever the ``linear=`` factory), drawing nothing from the generator."""
    vocab, width = embedding.weight.data.shape
    head = Linear(width, vocab, bias=bias, weight=np.zeros((vocab, width)), dtype=dtype)
    head.weight = embedding.weight
    return head


class CausalLM:
    """Generation and scoring for the decoder-only models (GPT, Llama), whose
    ``blocks`` each make their decode state (``new_state``). See ``generate/decoding.py``."""

    def _run_blocks(self, x, offset: int, cache, last_only: bool):
        """The decoder stack over x (B, T, C), each block with its cache slot; advances
        the cache by T; keeps only the last position when last_only."""
        for i, blk in enumerate(self.blocks):
            x = blk(x, offset=offset, cache=None if cache is None else cache.layer(i))
        if cache is not None:
            cache.advance(x.shape[1])
        return x[:, -1:] if last_only else x

    def new_cache(self, batch: int, capacity: int, pad=None):
        """A preallocated ``KVCache`` for ``batch`` rows of up to ``capacity`` positions,
        holding each block's decode state; pad: left-padding columns per row."""
        from ..generate.decoding import new_cache

        return new_cache(self, list(self.blocks), batch, capacity, pad)

    def generate(
        self,
        prompt_ids,
        max_new_tokens: int = 32,
        *,
        temperature: float = 0.0,
        top_k=None,
        top_p=None,
        eos_id=None,
        seed=None,
        use_cache: bool = True,
        pad_id: int = 0,
        progress: bool = False,
        callback=None,
    ):
        """New tokens (B, n <= max_new_tokens) int64 after each prompt: prompt_ids is a
        (B, T) int array or a list of 1-D sequences of different lengths. Greedy at
        temperature 0, else sampled (top-k, top-p) from a generator seeded by seed;
        rows stop at eos_id (filled with it after). callback(ids (B,)) sees each
        step's tokens as they come (streaming)."""
        from ..generate.decoding import generate

        return generate(
            self,
            prompt_ids,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            eos_id=eos_id,
            seed=seed,
            use_cache=use_cache,
            pad_id=pad_id,
            progress=progress,
            callback=callback,
        )

    def score(self, prompt_ids, target_ids):
        """Teacher-forced log p of each target token, (B, Tt) float64."""
        from ..generate.decoding import score

        return score(self, prompt_ids, target_ids)


def init_gpt_style(
    model: Module,
    n_layers: int,
    rng,
    std: float = 0.02,
    residual_names=("attn.proj.weight", "ff.fc2.weight"),
) -> None:
    """The weights of the model's ``nn.Linear`` layers N(0, std); projections into the
    residual stream N(0, std/sqrt(2 L)). Everything else keeps its own initialisation:
    norms, embeddings (a head tied to one included) and the parameters a ``linear=``,
    ``ff=`` or ``mixer=`` factory adds beside its Linear layers (an adapter's zero B)."""
    from ..nn import Embedding, Linear

    linear = {id(m.weight) for _, m in model.named_modules() if isinstance(m, Linear)}
    linear -= {id(m.weight) for _, m in model.named_modules() if isinstance(m, Embedding)}
    rng = np.random.default_rng(rng)
    for name, p in model.named_parameters():
        if id(p) not in linear:
            continue
        if name.endswith(residual_names):
            p.data = init.scaled_normal(p.data.shape, n_layers, std, rng, p.data.dtype)
        else:
            p.data = init.normal(p.data.shape, std, rng, p.data.dtype)
