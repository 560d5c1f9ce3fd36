"""Reading GGUF files through the ``gguf`` package: metadata as plain
Python values, tensors dequantised to float32 in PyTorch's layout
(``(out_features, in_features)`` for weight matrices)."""

from __future__ import annotations

import os
from typing import Dict, Tuple

import numpy as np


def _gguf():
    try:
        import gguf
    except ImportError as e:
        raise ImportError("reading GGUF files needs the gguf package: pip install gguf") from e
    return gguf


def read_gguf(path: str) -> Tuple[Dict, Dict[str, np.ndarray]]:
    """(metadata, tensors) of a GGUF file; raises ValueError for a damaged file."""
    gguf = _gguf()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no GGUF file at {path}")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # the reader raises many kinds on a damaged file
        raise ValueError(f"{path} is not a readable GGUF file: {e}") from e
    meta = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            meta[key] = field.contents()
        except Exception as e:
            raise ValueError(f"{path}: metadata field {key} is damaged: {e}") from e
    tensors = {}
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))  # GGUF lists the fastest axis first
        try:
            data = gguf.quants.dequantize(t.data, t.tensor_type)
        except Exception as e:
            raise ValueError(f"{path}: tensor {t.name} ({t.tensor_type.name}) cannot be decoded: {e}") from e
        data = np.asarray(data, np.float32)
        if data.size != int(np.prod(shape)):
            raise ValueError(f"{path}: tensor {t.name} holds {data.size} values, its shape {shape} needs more")
        tensors[t.name] = data.reshape(shape)
    return meta, tensors
