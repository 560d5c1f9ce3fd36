"""ferroformer: transformers on NumPy arrays with Rust kernels.

    import ferroformer as ff
    ops = ff.backend("rust")        # "numpy", "rust" or "cupy"; ff.backend() is the default
    y = ops.softmax_forward(x, causal=True)

See DESIGN.md for the op contract every backend implements.
"""

from __future__ import annotations

from ._malloc import tune_malloc
from .backends import (
    Backend,
    BackendUnavailable,
    available_backends,
    backend,
    set_backend,
)

__version__ = "0.1.0"

tune_malloc()  # see _malloc.py; FERROFORMER_MALLOC_TUNING=0 skips it


def set_num_threads(n: int) -> None:
    """Sizes the thread pool of the rust kernels (``0``: one per core)."""
    from . import _native

    if n < 0:
        raise ValueError(f"set_num_threads: n must be >= 0, got {n}")
    _native.set_num_threads(int(n))


def get_num_threads() -> int:
    """The size of the rust kernels' thread pool."""
    from . import _native

    return _native.get_num_threads()


def simd_level() -> str:
    """The instruction set the rust kernels run on this CPU: "avx512", "avx2" or
    "portable" (chosen once, at the first call, from a run-time CPU check)."""
    from . import _native

    return _native.simd_level()


def load_gguf(path, *, backend=None, max_seq_len=None, activations="int8"):
    """(model in eval mode, tokenizer) of a GGUF file of architecture ``llama`` or
    ``gpt2``, its weight matrices kept in the file's memory-mapped blocks (see
    ``ferroformer.quant.gguf_file``). ``activations``: ``"int8"`` (integer dot
    products, as llama.cpp) or ``"float"`` (exact; see ``quant.layers``). ValueError
    naming the file for a damaged one, another architecture or an unsupported tensor
    type."""
    from .quant.gguf_file import load_gguf as load

    return load(path, backend=backend, max_seq_len=max_seq_len, activations=activations)


def quantize(model, qtype, *, activations="int8"):
    """Quantizes ``model``'s linear layers to ``qtype`` ("Q8_0", "Q4_0", "Q4_1", "Q5_0",
    "Q5_1", "Q4_K", "Q6_K") in place and returns the model (``quant.quantize_model``)."""
    from .quant.layers import quantize_model

    return quantize_model(model, qtype, activations=activations)


def save_gguf(model, path, tokenizer=None) -> None:
    """Writes a GPT or Llama model (float or quantized) and its tokenizer to the GGUF
    file ``path``, atomically (``quant.gguf_write``)."""
    from .quant.gguf_write import save_gguf as save

    save(model, path, tokenizer=tokenizer)


__all__ = [
    "Backend",
    "BackendUnavailable",
    "available_backends",
    "backend",
    "get_num_threads",
    "load_gguf",
    "quantize",
    "save_gguf",
    "set_backend",
    "set_num_threads",
    "simd_level",
]
