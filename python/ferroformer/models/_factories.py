"""The layer factories every model takes, ``linear=``, ``ff=`` and ``mixer=``
(see nn/blocks.py), and how they stay out of its config.

A model's ``config`` is JSON and rebuilds its architecture; a factory is code,
so it is no part of it. A model built with factories other than the defaults
names them in ``model.factories`` ({} for a default model). To rebuild such a
model, pass the same factories again: ``GPT(**model.config, linear=...)``, then
``load_checkpoint(path, model=that)``. ``from_config``, or a checkpoint loaded
without a model, builds the default layers: their weights do not load where
the factories' layers name their parameters differently, and where the names
agree the model loads but computes with the default layers.
"""

from __future__ import annotations

from ..nn import make_feed_forward, make_linear, make_self_attention

DEFAULTS = {"linear": make_linear, "ff": make_feed_forward, "mixer": make_self_attention}


def split_factories(owner: str, args: dict):
    """A model constructor's arguments -> (its config arguments, the factories given
    that are not the defaults); a TypeError for a factory that is not callable."""
    given = {}
    for key, default in DEFAULTS.items():
        factory = args[key]
        if not callable(factory):
            raise TypeError(
                f"{owner}: {key}= must be a factory (a callable), got {type(factory).__name__}"
            )
        if factory is not default:
            given[key] = factory
    return {k: v for k, v in args.items() if k not in DEFAULTS}, given
