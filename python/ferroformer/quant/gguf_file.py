"""``load_gguf``: a Llama (or GPT-2) model straight from a GGUF file, its weight
matrices left in the file's blocks.

    model, tok = load_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", backend="rust")
    ids = tok.encode("The capital of France is")
    new = model.generate([ids], 8)

The file is memory-mapped once. Its structure is checked first (the
pretrained loader's ``check_gguf``: counts, lengths and offsets against the
bytes present), then its metadata against its tensors' names, types and
shapes (``check_config_against_tensors``), all before the model is built; any
failure is a ValueError naming the file. Every projection becomes a
``QuantizedLinear`` over views of the mapped bytes (q, k and v, and gate and
up, as the row-stacked parts llama.cpp keeps apart), the token embedding a
``QuantizedEmbedding`` over its bytes (a tied head is a ``QuantizedLinear``
over the same bytes); only norms, biases and GPT-2's position table are
decoded to float32. No float copy of a weight matrix is made.

llama.cpp's converter permuted the rows of Q and K so that RoPE rotates
adjacent pairs (x[2i], x[2i+1]), which is what ferroformer's rope op does, so
the rows are used as they lie (as pretrained/smollm.py does).

The metadata and the tensors' layout come from the pretrained loader's
``read_header``, the one parser of the format (after ``check_gguf`` has walked
it), rather than from ``gguf.GGUFReader``, which builds a NumPy array per
vocabulary string and takes seconds on a 49k-token vocabulary.

Tokenizers: byte-level BPE vocabularies (``tokenizer.ggml.model`` "gpt2", as
SmolLM, Llama 3 and GPT-2 have) come back as a ``Tokenizer`` with the file's
chat template; for another kind (SentencePiece "llama") the tokenizer is None,
with a warning.
"""

from __future__ import annotations

import mmap
import os
import warnings
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from .._files import open_regular
from ..checkpoint import check_config_against_tensors
from ..models import GPT, Llama
from ..pretrained.gguf_file import check_gguf, gguf_sizes, llama_config_from_gguf, read_header
from ..pretrained.tokenizer import bpe_from_gguf_metadata
from ..pretrained.values import positive
from .formats import block_format, dequantize
from .layers import QuantizedEmbedding, QuantizedLinear, _activations, set_activations
from .tensor import QuantizedTensor

WHAT = "GGUF file"
ARCHITECTURES = ("llama", "gpt2")


class TensorInfo(NamedTuple):
    """A tensor of the file: ``shape`` slowest axis first ((out, in) for a matrix)."""

    name: str
    shape: Tuple[int, ...]
    ggml_type: int
    start: int  # absolute byte offset of its data in the file
    nbytes: int


def read_layout(buf, where: str) -> Tuple[Dict[str, object], Dict[str, TensorInfo]]:
    """(metadata as Python values, tensors by name) of the checked GGUF bytes ``buf``;
    ValueError naming ``where`` for a tensor type ferroformer does not decode."""
    meta, raw, data_start = read_header(buf)
    tensors = {}
    for name, shape, gtype, offset in raw:
        try:
            fmt = block_format(gtype)
        except ValueError as e:
            raise ValueError(f"{where}: tensor {name}: {e}") from None
        numel = int(np.prod(shape, dtype=np.int64))
        tensors[name] = TensorInfo(
            name, shape, gtype, data_start + offset, numel // fmt.block_size * fmt.type_size
        )
    return meta, tensors


def _map(f, size: int, where: str):
    """The checked mmap of the whole open file ``f``."""
    if size < 24:
        raise ValueError(
            f"{where}: {size} bytes, too short for a GGUF header (truncated or not GGUF)"
        )
    buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    check_gguf(buf, where)
    return buf


# -- the model ------------------------------------------------------------------------
class _Tensors:
    """The file's tensors as QuantizedTensor views of the map ``data``, and small ones
    decoded from bytes read with ``os.pread`` on ``fd`` (reading them through the map
    would make the pages around each resident, most of the file for 61 norms)."""

    def __init__(self, data: np.ndarray, fd: int, infos: Dict[str, TensorInfo], path: str):
        self.data, self.fd, self.infos, self.path = data, fd, infos, path
        self.where = f"{path}: not a valid {WHAT}"

    def info(self, name: str) -> TensorInfo:
        if name not in self.infos:
            raise ValueError(f"{self.where}: the file has no tensor {name}")
        return self.infos[name]

    def blocks(self, name: str) -> QuantizedTensor:
        t = self.info(name)
        if len(t.shape) != 2:
            raise ValueError(f"{self.where}: tensor {name} has shape {t.shape}, not a matrix")
        return QuantizedTensor(self.data[t.start : t.start + t.nbytes], t.ggml_type, t.shape)

    def floats(self, name: str, rows: Optional[int] = None) -> np.ndarray:
        """A small tensor (a norm, a bias, a position table's first ``rows``) as float32."""
        t = self.info(name)
        n_rows = t.shape[0] if len(t.shape) > 1 else 1
        take = n_rows if rows is None else min(rows, n_rows)
        n = t.nbytes // n_rows * take
        raw = np.frombuffer(os.pread(self.fd, n, t.start), np.uint8)
        if raw.size != n:
            raise ValueError(f"{self.where}: tensor {name} was cut short while reading")
        raw = raw.reshape(take, -1)
        v = dequantize(raw, t.ggml_type).reshape(
            -1 if len(t.shape) == 1 else raw.shape[0], *t.shape[1:]
        )
        if not np.isfinite(v).all():
            raise ValueError(f"{self.where}: tensor {name} holds non-finite values")
        return v

    def stacked_shape(self, names: List[str]) -> Tuple[int, int]:
        shapes = [self.info(n).shape for n in names]
        if any(len(s) != 2 for s in shapes) or len({s[1] for s in shapes}) != 1:
            raise ValueError(
                f"{self.where}: tensors {names} have shapes {shapes}, which do not stack by rows"
            )
        return sum(s[0] for s in shapes), shapes[0][1]


def _validate(cls, config, where):
    try:
        cls.validate_config(config)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _llama(meta, t: _Tensors, max_seq_len, backend):
    where = t.where
    if max_seq_len is None:
        max_seq_len = positive(
            meta.get("llama.context_length"), int, "metadata llama.context_length", where
        )
    positive(max_seq_len, int, "max_seq_len", where)
    config = llama_config_from_gguf(meta, t.infos, max_seq_len, where)
    _validate(Llama, config, where)
    if config["n_layers"] > len(t.infos):
        raise ValueError(
            f"{where}: llama.block_count {config['n_layers']}, but the file holds "
            f"only {len(t.infos)} tensors"
        )
    groups = {"tok_emb.weight": ["token_embd.weight"], "norm.weight": ["output_norm.weight"]}
    for i in range(config["n_layers"]):
        g, f = f"blk.{i}.", f"blocks.{i}."
        groups.update(
            {
                f + "ln1.weight": [g + "attn_norm.weight"],
                f + "attn.qkv.weight": [g + f"attn_{n}.weight" for n in "qkv"],
                f + "attn.proj.weight": [g + "attn_output.weight"],
                f + "ln2.weight": [g + "ffn_norm.weight"],
                f + "ff.fc1.weight": [g + "ffn_gate.weight", g + "ffn_up.weight"],
                f + "ff.fc2.weight": [g + "ffn_down.weight"],
            }
        )
    if not config["tie_embeddings"]:
        groups["lm_head.weight"] = ["output.weight"]
    _check_shapes("Llama", config, groups, t)
    head_dim = config["d_model"] // config["n_heads"]
    rot = meta.get("llama.rope.dimension_count", head_dim)
    if rot != head_dim:
        raise ValueError(
            f"{where}: llama.rope.dimension_count {rot!r:.40} is not the head size "
            f"{head_dim}; partial rotary embeddings are not supported"
        )
    matrices = {
        k[: -len(".weight")]: v
        for k, v in groups.items()
        if k.endswith(
            (
                "attn.qkv.weight",
                "attn.proj.weight",
                "ff.fc1.weight",
                "ff.fc2.weight",
                "lm_head.weight",
            )
        )
    }
    matrices["lm_head"] = groups.get("lm_head.weight", ["token_embd.weight"])
    # built untied, so that the head comes from the factory as the file's blocks rather
    # than as a float matrix tied to a float embedding, and over a one-token vocabulary
    # (drawing a float table of the real one took most of a load; the quantized table
    # replaces it); config says what the file is
    model = Llama(
        **{**config, "tie_embeddings": False, "vocab_size": 1},
        linear=_factory(matrices, t),
        backend=backend,
        rng=0,
    )
    model.config.update(tie_embeddings=config["tie_embeddings"], vocab_size=config["vocab_size"])
    _set_embedding(model, "tok_emb", t.blocks("token_embd.weight"))
    floats = {
        k: t.floats(v[0]) for k, v in groups.items() if k.endswith(("ln1.weight", "ln2.weight"))
    }
    floats["norm.weight"] = t.floats("output_norm.weight")
    model.load_state_dict(floats)
    return model


def _gpt2(meta, t: _Tensors, max_seq_len, backend):
    where = t.where

    def get(key):
        return positive(meta.get("gpt2." + key), int, "metadata gpt2." + key, where)

    context = get("context_length")
    if max_seq_len is None:
        max_seq_len = context
    if not (isinstance(max_seq_len, int) and 1 <= max_seq_len <= context):
        raise ValueError(
            f"{where}: max_seq_len {max_seq_len!r:.40} must be an int in "
            f"[1, gpt2.context_length {context}] (the learned position table)"
        )
    eps = meta.get("gpt2.attention.layer_norm_epsilon", 1e-5)
    if not (isinstance(eps, float) and abs(eps - 1e-5) <= 1e-9):
        raise ValueError(
            f"{where}: gpt2.attention.layer_norm_epsilon {eps!r:.40}; GPT's LayerNorm uses 1e-5"
        )
    config = dict(gguf_sizes(meta, "gpt2", max_seq_len, where), dropout=0.0, bias=True)
    _validate(GPT, config, where)
    if config["n_layers"] > len(t.infos):
        raise ValueError(
            f"{where}: gpt2.block_count {config['n_layers']}, but the file holds "
            f"only {len(t.infos)} tensors"
        )
    groups = {
        "wte.weight": ["token_embd.weight"],
        "wpe.weight": ["position_embd.weight"],
        "ln_f.weight": ["output_norm.weight"],
        "ln_f.bias": ["output_norm.bias"],
    }
    for i in range(config["n_layers"]):
        g, f = f"blk.{i}.", f"blocks.{i}."
        for ours, theirs in (
            ("ln1", "attn_norm"),
            ("attn.qkv", "attn_qkv"),
            ("attn.proj", "attn_output"),
            ("ln2", "ffn_norm"),
            ("ff.fc1", "ffn_up"),
            ("ff.fc2", "ffn_down"),
        ):
            groups[f"{f}{ours}.weight"] = [f"{g}{theirs}.weight"]
            groups[f"{f}{ours}.bias"] = [f"{g}{theirs}.bias"]
    head = "output.weight" if "output.weight" in t.infos else "token_embd.weight"
    if head != "token_embd.weight" and t.info(head).shape != t.info("token_embd.weight").shape:
        raise ValueError(
            f"{where}: tensor output.weight has shape {t.info(head).shape}, the "
            f"token embedding {t.info('token_embd.weight').shape}"
        )
    positions = t.info("position_embd.weight").shape
    _check_shapes("GPT", config, groups, t, override={"wpe.weight": (max_seq_len, *positions[1:])})
    matrices = {
        k[: -len(".weight")]: v
        for k, v in groups.items()
        if k.endswith(".weight") and k.split(".")[-2] in ("qkv", "proj", "fc1", "fc2")
    }
    model = GPT(
        **{**config, "vocab_size": 1}, linear=_factory(matrices, t), backend=backend, rng=0
    )  # a one-token float table, replaced by the blocks (as for Llama)
    model.config["vocab_size"] = config["vocab_size"]
    _set_embedding(model, "wte", t.blocks("token_embd.weight"))
    q_head = QuantizedLinear(t.blocks(head))
    q_head.ops = model.ops
    model.head = q_head
    # norms, biases (the layers were built with zero ones) and the position table
    floats = {
        k: t.floats(v[0])
        for k, v in groups.items()
        if k != "wte.weight" and k[: -len(".weight")] not in matrices
    }
    floats["wpe.weight"] = t.floats("position_embd.weight", rows=max_seq_len)
    model.load_state_dict(floats)
    return model


def _check_shapes(cls_name, config, groups, t: _Tensors, override=None):
    """The metadata's model against the file's tensors (stacked where ferroformer stacks),
    tensors the mapping does not know included, so that they are refused."""
    shapes = {
        k: (t.stacked_shape(v) if len(v) > 1 else t.info(v[0]).shape)
        for k, v in groups.items()
        if all(n in t.infos for n in v)
    }
    shapes.update(override or {})
    mapped = {n for v in groups.values() for n in v}
    extra = {n: t.infos[n].shape for n in t.infos if n not in mapped and n != "output.weight"}
    missing = sorted(n for v in groups.values() for n in v if n not in t.infos)
    if missing:
        raise ValueError(
            f"{t.where}: the file has no tensor {', '.join(missing[:4])}"
            f"{' ...' if len(missing) > 4 else ''}"
        )
    check_config_against_tensors(t.path, cls_name, config, {**shapes, **extra}, what=WHAT)


def _factory(matrices: Dict[str, List[str]], t: _Tensors):
    """A ``linear=`` factory handing each projection (by its dotted name) its blocks; a
    bias starts at zero (load_state_dict sets it with the other float parameters)."""

    def linear(in_features, out_features, bias=True, *, rng=None, dtype=np.float32, name=""):
        parts = [t.blocks(n) for n in matrices[name]]
        b = np.zeros(out_features, dtype) if bias else None
        layer = QuantizedLinear(parts, b, dtype=dtype)
        if name in ("lm_head", "head"):  # built over a one-token vocabulary (see _llama)
            out_features = layer.out_features
        if (layer.in_features, layer.out_features) != (in_features, out_features):
            raise ValueError(
                f"{t.where}: {name} is ({layer.out_features}, "
                f"{layer.in_features}), the model needs ({out_features}, "
                f"{in_features})"
            )
        return layer

    return linear


def _set_embedding(model, attr: str, table: QuantizedTensor) -> None:
    emb = QuantizedEmbedding(table)
    emb.ops = model.ops
    setattr(model, attr, emb)


def load_gguf(path, *, backend=None, max_seq_len=None, activations="int8"):
    """(model in eval mode, tokenizer or None) of a GGUF file of architecture ``llama``
    or ``gpt2`` (see the module's docstring). ``max_seq_len`` defaults to the file's
    context length. FileNotFoundError for a missing file; ValueError naming the file for
    a damaged one, another architecture or an unsupported tensor type. ``activations``
    ("int8" or "float") is set on every QuantizedLinear (see layers.py)."""
    _activations("load_gguf", activations)
    path = os.fspath(path)
    where = f"{path}: not a valid {WHAT}"
    f, size = open_regular(path, WHAT)
    with f:
        buf = _map(f, size, where)
        meta, infos = read_layout(buf, where)
        arch = meta.get("general.architecture")
        if arch not in ARCHITECTURES:
            raise ValueError(
                f"{path}: architecture {arch!r:.80} is not supported; supported: "
                f"{', '.join(ARCHITECTURES)}"
            )
        tensors = _Tensors(np.frombuffer(buf, np.uint8), f.fileno(), infos, path)
        build = _llama if arch == "llama" else _gpt2
        tok = _tokenizer(meta, path, where)
        model = build(meta, tensors, max_seq_len, backend)
    model.eval()
    set_activations(model, activations)
    return model, tok


def _tokenizer(meta, path: str, where: str):
    kind = meta.get("tokenizer.ggml.model", "gpt2")
    if kind == "gpt2":
        return bpe_from_gguf_metadata(meta, source=where)
    warnings.warn(
        f"{path}: tokenizer model {kind!r:.40} is not supported yet (byte-level BPE "
        f'"gpt2" is); load_gguf returns no tokenizer',
        stacklevel=3,
    )
    return None
