"""Published pretrained models whose files ship inside PyPI packages.

    model, tok = ferroformer.pretrained.load("all-MiniLM-L6-v2")       # BERT + WordPiece
    model, tok = ferroformer.pretrained.load("SmolLM2-135M-Instruct")  # Llama + BPE + chat template

A missing package raises ``MissingPackage`` naming the pip command.
"""

from __future__ import annotations

from .files import PACKAGES, MissingPackage

MODELS = ("all-MiniLM-L6-v2", "SmolLM2-135M-Instruct")


def load(name: str, backend=None):
    """(model in eval mode, tokenizer) of a pretrained model named in ``MODELS``."""
    if name == "all-MiniLM-L6-v2":
        from .minilm import load_minilm

        return load_minilm(backend=backend)
    if name == "SmolLM2-135M-Instruct":
        from .smollm import load_smollm

        return load_smollm(backend=backend)
    raise ValueError(f"unknown pretrained model {name!r}; choose one of {', '.join(MODELS)}")


__all__ = ["MODELS", "PACKAGES", "MissingPackage", "load"]
