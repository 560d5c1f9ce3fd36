"""Fuzz target: the file readers, each on bytes written to a temporary file.

The first byte of an input picks the reader, the rest is the file:

    0  checkpoint   ferroformer.checkpoint.load_checkpoint(path) (a safetensors file with
                    the model config, step and rng states as metadata)
    1  safetensors  pretrained.minilm's safetensors reader, then bert_state_from_hf
                    (a Hugging Face BERT weights file)
    2  config.json  pretrained.minilm.load_minilm on a folder whose config.json is the
                    input (model.safetensors and tokenizer.json there are tiny valid ones)
    3  gguf         pretrained.gguf_file.read_gguf(path) (metadata and dequantised tensors)
    4  gguf model   pretrained.smollm.load_smollm on the file (metadata -> Llama, weights,
                    tokenizer from metadata)
    5  model config load_checkpoint of a valid checkpoint whose model_config metadata is
                    the input (JSON text): the config checks before the model is built
    6  gguf quant   ferroformer.quant's load_gguf on the file (quantized blocks kept as
                    they are), where that module exists

Verdicts: only ValueError may come out (the readers' documented failure: "raises
ValueError with what is wrong"); any other exception is a crash, and so is a
ValueError wrapping a MemoryError or RecursionError (an allocation or nesting the
file does not justify, hidden by a reader's catch-all), and an input slower than
``TIME_LIMIT``. The process runs under a 2 GiB address-space limit, so a size field
that is believed before it is checked against the file shows as a MemoryError.

    python fuzz/python/fuzz_files.py --make-seeds fuzz/corpus/py-files   # seed files
    python fuzz/python/fuzz_files.py -max_total_time=60 fuzz/work/py-files fuzz/corpus/py-files
"""

from __future__ import annotations

import atexit
import inspect
import json
import os
import shutil
import struct
import sys
import tempfile

import atheris

with atheris.instrument_imports():
    import numpy as np

    import ferroformer
    import ferroformer.models  # noqa: F401
    from ferroformer import checkpoint
    from ferroformer.pretrained import files as pretrained_files
    from ferroformer.pretrained import (
        minilm,
        smollm,
        tokenizer,  # noqa: F401
    )

    try:
        import gguf  # noqa: F401

        from ferroformer.pretrained import gguf_file
    except ImportError:  # no gguf package: modes 3, 4 and 6 are skipped
        gguf_file = None
    try:
        from ferroformer.quant.gguf_file import load_gguf as quant_load_gguf
    except ImportError:
        quant_load_gguf = None

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness

ALLOWED = (ValueError,)
HIDDEN = (MemoryError, RecursionError)
TIME_LIMIT = 2.0
MODES = (
    "checkpoint",
    "safetensors",
    "config-json",
    "gguf",
    "gguf-model",
    "model-config",
    "gguf-quant",
)

_DIR = tempfile.mkdtemp(prefix="ferroformer-fuzz-files-")
atexit.register(shutil.rmtree, _DIR, True)
_FILE = os.path.join(_DIR, "input.bin")
_MINILM = os.path.join(_DIR, "minilm")
_CKPT_META: dict = {}  # a valid checkpoint's metadata and tensors, for mode 5


# -- small valid files: the seeds, and the fixed parts of modes 2 and 5 ---------------------
def tiny_gpt():
    from ferroformer.models import GPT

    return GPT(vocab_size=8, max_seq_len=8, d_model=8, n_heads=2, n_layers=1, rng=0)


def checkpoint_bytes(model=None) -> bytes:
    path = os.path.join(_DIR, "seed.safetensors")
    checkpoint.save_checkpoint(path, model or tiny_gpt(), step=3)
    with open(path, "rb") as f:
        return f.read()


TINY_BERT = {
    "hidden_act": "gelu",
    "hidden_size": 8,
    "intermediate_size": 16,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 16,
    "num_attention_heads": 2,
    "num_hidden_layers": 1,
    "type_vocab_size": 2,
    "vocab_size": 30522,
}


def bert_tensors(cfg=TINY_BERT) -> dict:
    """A Hugging Face BertModel state for ``cfg`` (the names bert_state_from_hf reads)."""
    c, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    rng = np.random.default_rng(0)

    def w(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    t = {
        "embeddings.word_embeddings.weight": w(v, c),
        "embeddings.position_embeddings.weight": w(cfg["max_position_embeddings"], c),
        "embeddings.token_type_embeddings.weight": w(cfg["type_vocab_size"], c),
        "embeddings.LayerNorm.weight": np.ones(c, np.float32),
        "embeddings.LayerNorm.bias": np.zeros(c, np.float32),
    }
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for n in ("query", "key", "value"):
            t[f"{p}attention.self.{n}.weight"], t[f"{p}attention.self.{n}.bias"] = w(c, c), w(c)
        t[f"{p}attention.output.dense.weight"], t[f"{p}attention.output.dense.bias"] = w(c, c), w(c)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[f"{p}{ln}.weight"], t[f"{p}{ln}.bias"] = (
                np.ones(c, np.float32),
                np.zeros(c, np.float32),
            )
        t[f"{p}intermediate.dense.weight"], t[f"{p}intermediate.dense.bias"] = w(f, c), w(f)
        t[f"{p}output.dense.weight"], t[f"{p}output.dense.bias"] = w(c, f), w(c)
    return t


def safetensors_bytes(tensors) -> bytes:
    from safetensors.numpy import save

    return save(tensors)


def gguf_bytes() -> bytes:
    """A tiny llama GGUF (the keys and tensors load_smollm reads), F32 and Q8_0 tensors."""
    import gguf
    from gguf.quants import quantize

    path = os.path.join(_DIR, "seed.gguf")
    d, ff, vocab = 32, 32, 8
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(1)
    w.add_context_length(16)
    w.add_embedding_length(d)
    w.add_feed_forward_length(ff)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    tokens = ["a", "b", "c", "ab", "<|im_start|>", "<|im_end|>", "Ġ", "bc"]
    w.add_token_list(tokens)
    w.add_token_types([1, 1, 1, 1, 3, 3, 1, 1])
    w.add_token_merges(["a b", "b c"])
    w.add_bos_token_id(4)
    w.add_eos_token_id(5)
    w.add_chat_template(
        "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
    )
    rng = np.random.default_rng(0)

    def mat(rows, cols, q8=True):
        x = (rng.standard_normal((rows, cols)) * 0.1).astype(np.float32)
        if not q8:
            return x, None
        return quantize(x, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0

    def add(name, x, qtype=None):
        if qtype is None:
            w.add_tensor(name, x)
        else:
            w.add_tensor(name, x, raw_shape=x.shape, raw_dtype=qtype)

    head = d // 2
    add("token_embd.weight", *mat(vocab, d, q8=False))
    add("output_norm.weight", np.ones(d, np.float32))
    add("blk.0.attn_norm.weight", np.ones(d, np.float32))
    add("blk.0.ffn_norm.weight", np.ones(d, np.float32))
    add("blk.0.attn_q.weight", *mat(d, d))
    add("blk.0.attn_k.weight", *mat(head, d))
    add("blk.0.attn_v.weight", *mat(head, d))
    add("blk.0.attn_output.weight", *mat(d, d))
    add("blk.0.ffn_gate.weight", *mat(ff, d))
    add("blk.0.ffn_up.weight", *mat(ff, d))
    add("blk.0.ffn_down.weight", *mat(d, ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with open(path, "rb") as f:
        return f.read()


def make_seeds(folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    seeds = {
        "checkpoint": bytes([0]) + checkpoint_bytes(),
        "safetensors": bytes([1]) + safetensors_bytes(bert_tensors({**TINY_BERT, "vocab_size": 8})),
        "config-json": bytes([2]) + json.dumps(TINY_BERT).encode(),
        "model-config": bytes([5]) + json.dumps(tiny_gpt().config).encode(),
    }
    if gguf_file is not None:
        g = gguf_bytes()
        seeds["gguf"], seeds["gguf-model"] = bytes([3]) + g, bytes([4]) + g
        seeds["gguf-quant"] = bytes([6]) + g
    for name, data in seeds.items():
        with open(os.path.join(folder, f"seed-{name}"), "wb") as f:
            f.write(data)


def _setup() -> None:
    """The fixed files of modes 2 and 5, made once per process."""
    os.makedirs(_MINILM, exist_ok=True)
    with open(os.path.join(_MINILM, "model.safetensors"), "wb") as f:
        f.write(safetensors_bytes(bert_tensors()))
    real = os.path.join(pretrained_files.package_path("all-MiniLM-L6-v2"), "tokenizer.json")
    with open(real, "rb") as src, open(os.path.join(_MINILM, "tokenizer.json"), "wb") as dst:
        dst.write(src.read())
    data = checkpoint_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    _CKPT_META["header"] = json.loads(data[8 : 8 + n])
    _CKPT_META["body"] = data[8 + n :]


# -- the readers ------------------------------------------------------------------------------
def _write(data: bytes, path: str = _FILE) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


def _package_path(folder_or_file):
    def package_path(name):
        return folder_or_file

    return package_path


def read_checkpoint(data):
    checkpoint.load_checkpoint(_write(data))


def read_safetensors(data):
    t = minilm._read_safetensors(_write(data))
    minilm.bert_state_from_hf(t, 1)


def _takes(fn, name) -> bool:
    return name in inspect.signature(fn).parameters


def read_config_json(data):
    _write(data, os.path.join(_MINILM, "config.json"))
    if _takes(minilm.load_minilm, "folder"):
        minilm.load_minilm(backend="numpy", folder=_MINILM)
        return
    saved = minilm.package_path
    minilm.package_path = _package_path(_MINILM)
    try:
        minilm.load_minilm(backend="numpy")
    finally:
        minilm.package_path = saved


def read_gguf(data):
    gguf_file.read_gguf(_write(data))


def read_gguf_model(data):
    if _takes(smollm.load_smollm, "path"):
        _model, tok = smollm.load_smollm(backend="numpy", max_seq_len=16, path=_write(data))
        tok.encode("ab c")
        return
    saved = smollm.package_path
    smollm.package_path = _package_path(_write(data))
    try:
        _model, tok = smollm.load_smollm(backend="numpy", max_seq_len=16)
    finally:
        smollm.package_path = saved
    tok.encode("ab c")


def read_model_config(data):
    header = dict(_CKPT_META["header"])
    header["__metadata__"] = {
        **header["__metadata__"],
        "model_config": data.decode("utf-8", errors="surrogateescape"),
    }
    try:
        text = json.dumps(header).encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(header, ensure_ascii=True).encode()
    checkpoint.load_checkpoint(_write(struct.pack("<Q", len(text)) + text + _CKPT_META["body"]))


def read_gguf_quant(data):
    quant_load_gguf(_write(data), backend="numpy", max_seq_len=16)


READERS = (
    read_checkpoint,
    read_safetensors,
    read_config_json,
    read_gguf,
    read_gguf_model,
    read_model_config,
    read_gguf_quant,
)


def one_input(data: bytes) -> None:
    if not _CKPT_META:
        _setup()
    if not data:
        return
    mode = data[0] % len(READERS)
    harness.label = MODES[mode]
    if (mode in (3, 4, 6) and gguf_file is None) or (mode == 6 and quant_load_gguf is None):
        return
    READERS[mode](data[1:])


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--make-seeds":
        make_seeds(sys.argv[2])
        sys.exit(0)
    harness.run(one_input, ALLOWED, hidden=HIDDEN, time_limit=TIME_LIMIT)
