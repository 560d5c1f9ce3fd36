"""``save_gguf``: a GPT or Llama model, float or quantized, as a GGUF file that
llama.cpp loads (and ``load_gguf`` reads back to the same logits).

    save_gguf(model, "model.Q4_K.gguf", tokenizer=tok)

Float matrices, norms, biases and positions are written as F32; the blocks of a
``QuantizedLinear`` (or ``QuantizedEmbedding``) are written as they are, never
decoded: ferroformer's stacked q/k/v and gate/up are split back by rows into
llama.cpp's tensors (a row range is whole rows of blocks). Rows of Q and K are
kept in their order: ferroformer's rope rotates adjacent pairs, as the rows of a
llama.cpp file are laid out for. The metadata is what llama.cpp's loader reads
(llama-model-loader / gguf-py constants): architecture, context, embedding,
block and feed-forward sizes, heads and kv heads, rope base and dimension, norm
epsilon, and the tokenizer (``tokenizer.ggml.*``: byte-level BPE "gpt2" tokens,
types, merges, pre-tokenizer, bos/eos/padding ids, chat template). Without a
tokenizer the vocabulary is written as placeholder tokens of model "none".

The file goes to a temporary name in the target's directory, is fsynced and then
renamed over the target (the target is untouched when anything fails).
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..backends import to_host
from ..models import GPT, Llama
from ..nn.embedding import Embedding
from ..nn.linear import Linear
from .formats import block_format
from .layers import QuantizedEmbedding, QuantizedLinear


def _gguf():
    try:
        import gguf
    except ImportError as e:
        raise ImportError("save_gguf needs the gguf package: pip install gguf") from e
    return gguf


def _floats(a) -> np.ndarray:
    return np.ascontiguousarray(to_host(a), dtype=np.float32)


def _row_ranges(layer, sizes: List[int], what: str) -> List[Tuple[np.ndarray, Optional[str]]]:
    """``layer``'s weight cut by rows into pieces of ``sizes``: (float32 rows, None) of a
    Linear, (raw block rows, type name) of a QuantizedLinear."""
    if isinstance(layer, Linear):
        w = _floats(layer.weight.data)
        out, at = [], 0
        for n in sizes:
            out.append((w[at : at + n], None))
            at += n
        return out
    if not isinstance(layer, QuantizedLinear):
        raise TypeError(
            f"save_gguf: {what} is a {type(layer).__name__}, not a Linear or QuantizedLinear"
        )
    bounds, at = [], 0
    for p in layer.parts:
        bounds.append((at, at + p.out_features, p))
        at += p.out_features
    out, at = [], 0
    for n in sizes:
        pieces = [
            (max(a, at) - a, min(b, at + n) - a, p) for a, b, p in bounds if a < at + n and b > at
        ]
        if len({p.qtype for _, _, p in pieces}) != 1:
            raise ValueError(
                f"save_gguf: rows [{at}, {at + n}) of {what} span block types "
                f"{[p.qtype for _, _, p in pieces]}; one tensor has one type"
            )
        data = np.concatenate([p.data[lo:hi] for lo, hi, p in pieces])
        out.append((data, pieces[0][2].qtype))
        at += n
    return out


class _Tensors:
    def __init__(self, writer, gguf):
        self.writer, self.gguf = writer, gguf
        self.types: Dict[str, int] = {}

    def add(self, name: str, data: np.ndarray, qtype: Optional[str] = None) -> None:
        if qtype is None:
            self.writer.add_tensor(name, _floats(data))
            self.types[name] = 0
        else:
            fmt = block_format(qtype)
            self.writer.add_tensor(
                name,
                np.ascontiguousarray(data),
                raw_dtype=self.gguf.GGMLQuantizationType(fmt.ggml_type),
            )
            self.types[name] = fmt.ggml_type

    def matrix(self, name: str, layer, what: str) -> None:
        ((data, qtype),) = _row_ranges(layer, [layer.out_features], what)
        self.add(name, data, qtype)

    def split(self, names: List[str], layer, sizes: List[int], what: str) -> None:
        for name, (data, qtype) in zip(names, _row_ranges(layer, sizes, what)):
            self.add(name, data, qtype)

    def embedding(self, name: str, emb) -> None:
        if isinstance(emb, QuantizedEmbedding):
            self.add(name, emb.table.data, emb.table.qtype)
        elif isinstance(emb, Embedding):
            self.add(name, emb.weight.data)
        else:
            raise TypeError(f"save_gguf: the token embedding is a {type(emb).__name__}")


def _tied(head, emb) -> bool:
    """Whether the output head is the token embedding's matrix."""
    if isinstance(head, Linear) and isinstance(emb, Embedding):
        return head.weight is emb.weight
    if isinstance(head, QuantizedLinear) and isinstance(emb, QuantizedEmbedding):
        a, b = head.parts[0].data, emb.table.data
        return (
            len(head.parts) == 1
            and a.shape == b.shape
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
        )
    return False


def _llama(model: Llama, t: _Tensors, w, gguf) -> None:
    c = model.config
    n_layers, d, nh = c["n_layers"], c["d_model"], c["n_heads"]
    nkv = c.get("n_kv_heads") or nh
    hd = d // nh
    d_ff = model.blocks[0].ff.fc2.in_features
    w.add_context_length(int(c["max_seq_len"]))
    w.add_embedding_length(d)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(d_ff)
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_rope_freq_base(float(c.get("rope_base", 10000.0)))
    w.add_layer_norm_rms_eps(float(c.get("norm_eps", 1e-6)))
    w.add_rope_dimension_count(hd)
    w.add_vocab_size(int(c["vocab_size"]))
    t.embedding("token_embd.weight", model.tok_emb)
    for i, blk in enumerate(model.blocks):
        g = f"blk.{i}."
        t.add(g + "attn_norm.weight", blk.ln1.weight.data)
        t.split(
            [g + "attn_q.weight", g + "attn_k.weight", g + "attn_v.weight"],
            blk.attn.qkv,
            [nh * hd, nkv * hd, nkv * hd],
            f"blocks.{i}.attn.qkv",
        )
        t.matrix(g + "attn_output.weight", blk.attn.proj, f"blocks.{i}.attn.proj")
        t.add(g + "ffn_norm.weight", blk.ln2.weight.data)
        t.split(
            [g + "ffn_gate.weight", g + "ffn_up.weight"],
            blk.ff.fc1,
            [d_ff, d_ff],
            f"blocks.{i}.ff.fc1",
        )
        t.matrix(g + "ffn_down.weight", blk.ff.fc2, f"blocks.{i}.ff.fc2")
    t.add("output_norm.weight", model.norm.weight.data)
    if not _tied(model.lm_head, model.tok_emb):
        t.matrix("output.weight", model.lm_head, "lm_head")


def _gpt2(model: GPT, t: _Tensors, w, gguf) -> None:
    c = model.config
    d, n_layers = c["d_model"], c["n_layers"]
    w.add_context_length(int(c["max_seq_len"]))
    w.add_embedding_length(d)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(model.blocks[0].ff.fc2.in_features)
    w.add_head_count(c["n_heads"])
    w.add_layer_norm_eps(1e-5)
    t.embedding("token_embd.weight", model.wte)
    t.add("position_embd.weight", model.wpe.weight.data)
    for i, blk in enumerate(model.blocks):
        g = f"blk.{i}."
        for theirs, layer in (
            ("attn_qkv", blk.attn.qkv),
            ("attn_output", blk.attn.proj),
            ("ffn_up", blk.ff.fc1),
            ("ffn_down", blk.ff.fc2),
        ):
            t.matrix(g + theirs + ".weight", layer, f"blocks.{i}.{theirs}")
            if layer.bias is not None:
                t.add(g + theirs + ".bias", layer.bias.data)
        for theirs, norm in (("attn_norm", blk.ln1), ("ffn_norm", blk.ln2)):
            t.add(g + theirs + ".weight", norm.weight.data)
            t.add(g + theirs + ".bias", norm.bias.data)
    t.add("output_norm.weight", model.ln_f.weight.data)
    t.add("output_norm.bias", model.ln_f.bias.data)
    if not _tied(model.head, model.wte):
        t.matrix("output.weight", model.head, "head")


def _tokenizer_metadata(w, tokenizer, vocab_size: int) -> None:
    if tokenizer is None:
        w.add_tokenizer_model("none")
        w.add_token_list([f"<t{i}>" for i in range(vocab_size)])
        return
    inner = tokenizer.inner
    vocab = inner.get_vocab(with_added_tokens=True)
    if len(vocab) != vocab_size or sorted(vocab.values()) != list(range(vocab_size)):
        raise ValueError(
            f"save_gguf: the tokenizer has {len(vocab)} tokens (ids "
            f"{min(vocab.values(), default=0)}..{max(vocab.values(), default=0)}), "
            f"the model's vocabulary {vocab_size}"
        )
    tokens = [""] * vocab_size
    for tok, i in vocab.items():
        tokens[i] = tok
    spec = json.loads(inner.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise ValueError(
            f"save_gguf: only byte-level BPE tokenizers are written, this one is "
            f"{model.get('type')!r}"
        )
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    special = {a["content"] for a in spec.get("added_tokens", []) if a.get("special")}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(getattr(tokenizer, "pre", None) or "gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if tok in special else 1 for tok in tokens])
    w.add_token_merges(merges)
    for key, v in (("bos", tokenizer.bos_id), ("eos", tokenizer.eos_id), ("pad", tokenizer.pad_id)):
        if v is not None:
            getattr(w, f"add_{key}_token_id")(int(v))
    if tokenizer.chat_template is not None:
        w.add_chat_template(tokenizer.chat_template)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_gguf(model, path, tokenizer=None) -> None:
    """Writes ``model`` (a ``GPT`` or ``Llama``, float or quantized) and ``tokenizer``
    (a byte-level BPE ``Tokenizer``, or None) to the GGUF file ``path``, atomically.
    TypeError for another kind of model; ValueError for a path that is not a regular
    file, a tokenizer that does not fit the model, or a stacked weight whose pieces
    do not split by type."""
    gguf = _gguf()
    if isinstance(model, Llama):
        arch, write = "llama", _llama
    elif isinstance(model, GPT):
        arch, write = "gpt2", _gpt2
    else:
        raise TypeError(f"save_gguf: writes GPT and Llama models, got {type(model).__name__}")
    path = os.fspath(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ValueError(
                f"{path}: not a regular file (a device, FIFO, socket or "
                f"directory); refusing to replace it"
            )
    except FileNotFoundError:
        pass
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, arch)
        w.add_name(str(getattr(model, "name", None) or type(model).__name__))
        t = _Tensors(w, gguf)
        write(model, t, w, gguf)
        _tokenizer_metadata(w, tokenizer, int(model.config["vocab_size"]))
        w.add_file_type(_file_type(t.types))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        if hasattr(os, "chmod"):
            os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# llama_ftype of the file (general.file_type): the type of most of the matrices
_FTYPE = {0: 0, 1: 1, 30: 32, 8: 7, 2: 2, 3: 3, 6: 8, 7: 9, 12: 15, 13: 17, 14: 18}


def _file_type(types: Dict[str, int]) -> int:
    counts: Dict[int, int] = {}
    for name, gtype in types.items():
        if name.endswith(".weight") and "norm" not in name:
            counts[gtype] = counts.get(gtype, 0) + 1
    if not counts:
        return 0
    return _FTYPE.get(max(counts, key=counts.get), 0)
