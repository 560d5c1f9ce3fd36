"""Every file ferroformer reads, given hostile content: checkpoints (safetensors +
JSON metadata), the pretrained safetensors, config.json and tokenizer files, GGUF.

Each hostile read runs in a worker process (``guard``) with a memory limit, so a
read that hangs fails its test after CALL_TIMEOUT seconds instead of hanging the
run, and one that allocates what a header claims dies with MemoryError instead of
swapping. Every case must give ValueError naming the file (FileNotFoundError for
a missing one). Positive controls load the same small files unharmed, and the
guard's own tests show that it does catch a hang and an over-allocation.
"""

from __future__ import annotations

import json
import os
import select
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ferroformer import _files
from ferroformer.checkpoint import (
    expected_shapes,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from ferroformer.models import BERT, GPT, Llama, Transformer

from model_helpers import tiny_transformer

CALL_TIMEOUT = 30.0  # seconds; a refusal takes milliseconds, this only catches hangs
MEMORY_LIMIT = 3 << 30  # address space of the worker: no hostile file may make it allocate more

# -- the guard: a worker process that runs one read at a time ------------------------------
WORKER = textwrap.dedent(r"""
    import importlib, json, os, resource, sys, time
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything the code prints goes to stderr, not into the replies
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for m in ("numpy", "ferroformer.checkpoint", "ferroformer._files",
              "ferroformer.pretrained.minilm", "ferroformer.pretrained.smollm",
              "ferroformer.pretrained.gguf_file", "ferroformer.pretrained.tokenizer"):
        importlib.import_module(m)
    for m in ("tokenizers", "gguf", "safetensors.numpy"):
        try:
            importlib.import_module(m)
        except ImportError:
            pass
    proto.write("ready\n"); proto.flush()
    for line in sys.stdin:
        req = json.loads(line)
        mod, _, name = req["fn"].partition(":")
        t = time.perf_counter()
        try:
            getattr(importlib.import_module(mod), name)(*req["args"], **req["kwargs"])
            out = {"error": None, "message": ""}
        except BaseException as e:
            out = {"error": type(e).__name__, "message": str(e)[:2000]}
        out["seconds"] = time.perf_counter() - t
        proto.write(json.dumps(out) + "\n"); proto.flush()
""")


class Guard:
    def __init__(self):
        self.proc = None

    def _start(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(MEMORY_LIMIT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if self._line(120.0) != "ready\n":
            self.stop()
            pytest.fail("the guard's worker process did not start")

    def _line(self, timeout):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline() if ready else None

    def stop(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc.stdin.close()
            self.proc.stdout.close()
            self.proc = None

    def call(self, fn: str, *args, timeout: float = CALL_TIMEOUT, **kwargs) -> dict:
        """{"error": exception class name or None, "message", "seconds"}; "error" is
        "timeout" for a call still running after ``timeout``, "died" for a worker lost."""
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        req = {
            "fn": fn,
            "args": [os.fspath(a) if isinstance(a, os.PathLike) else a for a in args],
            "kwargs": {
                k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in kwargs.items()
            },
        }
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            self.stop()
            return {"error": "died", "message": "the worker exited", "seconds": 0.0}
        line = self._line(timeout)
        if line is None:
            self.stop()
            return {
                "error": "timeout",
                "message": f"still running after {timeout} s",
                "seconds": timeout,
            }
        if not line:
            rc = self.proc.wait()
            self.stop()
            return {"error": "died", "message": f"the worker exited with {rc}", "seconds": 0.0}
        return json.loads(line)


@pytest.fixture(scope="module")
def guard():
    g = Guard()
    yield g
    g.stop()


def refused(guard, fn, *args, names, exc="ValueError", match=None, **kwargs):
    """Runs fn in the guard; it must raise ``exc`` whose message names ``names`` (a path)."""
    out = guard.call(fn, *args, **kwargs)
    assert out["error"] == exc, f"{fn}{args}{kwargs}: expected {exc}, got {out}"
    assert os.fspath(names) in out["message"], f"the message does not name {names}: {out}"
    if match is not None:
        assert match in out["message"], out
    return out


def accepted(guard, fn, *args, **kwargs):
    out = guard.call(fn, *args, **kwargs)
    assert out["error"] is None, out
    return out


def test_guard_catches_a_hang(guard):
    assert guard.call("time:sleep", 20, timeout=1.0)["error"] == "timeout"
    accepted(guard, "time:sleep", 0)  # and a fresh worker takes over


def test_guard_catches_an_over_allocation(guard):
    assert guard.call("numpy:ones", [1 << 31, 4])["error"] == "MemoryError"  # 64 GiB


# -- small valid files ------------------------------------------------------------------------
def _st_split(data: bytes):
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _st_join(header, body: bytes) -> bytes:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + body


def tiny_gpt(seed=0):
    return GPT(11, max_seq_len=8, d_model=8, n_heads=2, n_layers=1, backend="numpy", rng=seed)


@pytest.fixture(scope="module")
def ckpt_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "c.safetensors"
    save_checkpoint(path, tiny_gpt())
    return path.read_bytes()


LOAD = "ferroformer.checkpoint:load_checkpoint"
READ = "ferroformer.checkpoint:read_checkpoint"
SAFETENSORS = "ferroformer.pretrained.minilm:_read_safetensors"  # the pretrained weights' reader
GGUF = "ferroformer.pretrained.gguf_file:read_gguf"
SMOLLM = "ferroformer.pretrained.smollm:load_smollm"
MINILM = "ferroformer.pretrained.minilm:load_minilm"
WORDPIECE = "ferroformer.pretrained.tokenizer:wordpiece_from_file"
GPT2 = "ferroformer.pretrained.tokenizer:gpt2_from_files"
READ_JSON = "ferroformer._files:read_json"

# MiniLM-shaped BERT in Hugging Face's names, tiny
V_BERT, C, F_BERT = 12, 8, 16
HF_CONFIG = {
    "hidden_act": "gelu",
    "hidden_size": C,
    "intermediate_size": F_BERT,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 16,
    "num_attention_heads": 2,
    "num_hidden_layers": 1,
    "type_vocab_size": 2,
    "vocab_size": V_BERT,
}
WORDS = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "the",
    "weather",
    "is",
    "lovely",
    "today",
    ".",
    "sun",
    "##ny",
]


def hf_bert_tensors(rng):
    t = {
        "embeddings.word_embeddings.weight": (V_BERT, C),
        "embeddings.position_embeddings.weight": (16, C),
        "embeddings.token_type_embeddings.weight": (2, C),
        "embeddings.LayerNorm.weight": (C,),
        "embeddings.LayerNorm.bias": (C,),
    }
    p = "encoder.layer.0."
    for n in ("query", "key", "value"):
        t[f"{p}attention.self.{n}.weight"], t[f"{p}attention.self.{n}.bias"] = (C, C), (C,)
    t.update(
        {
            f"{p}attention.output.dense.weight": (C, C),
            f"{p}attention.output.dense.bias": (C,),
            f"{p}attention.output.LayerNorm.weight": (C,),
            f"{p}attention.output.LayerNorm.bias": (C,),
            f"{p}intermediate.dense.weight": (F_BERT, C),
            f"{p}intermediate.dense.bias": (F_BERT,),
            f"{p}output.dense.weight": (C, F_BERT),
            f"{p}output.dense.bias": (C,),
            f"{p}output.LayerNorm.weight": (C,),
            f"{p}output.LayerNorm.bias": (C,),
        }
    )
    out = {k: rng.standard_normal(s).astype(np.float32) for k, s in t.items()}
    out["embeddings.position_ids"] = np.arange(16, dtype=np.int64)[None]  # as the real file has
    return out


def make_minilm(folder, rng=None):
    pytest.importorskip("tokenizers")
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(HF_CONFIG))
    save_file(
        hf_bert_tensors(np.random.default_rng(0) if rng is None else rng),
        str(folder / "model.safetensors"),
    )
    tk = Tokenizer(models.WordPiece({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    (folder / "tokenizer.json").write_text(tk.to_str())
    return folder


def make_gpt2(folder):
    folder.mkdir(exist_ok=True)
    (folder / "encoder.json").write_text(json.dumps({"a": 0, "b": 1, "ab": 2, "<|endoftext|>": 3}))
    (folder / "vocab.bpe").write_text("#version: 0.2\na b\n")
    return folder


# GGUF, written by hand so that every count and length can lie
def _s(x) -> bytes:
    b = x.encode() if isinstance(x, str) else x
    return struct.pack("<Q", len(b)) + b


U32, I32, F32, STR, ARR = 4, 5, 6, 8, 9


def _val(vtype, v) -> bytes:
    if vtype == STR:
        return _s(v)
    if vtype == ARR:
        itype, items = v
        return struct.pack("<IQ", itype, len(items)) + b"".join(_val(itype, x) for x in items)
    return struct.pack({U32: "<I", I32: "<i", F32: "<f"}[vtype], v)


def _kv(key, vtype, v) -> bytes:
    return _s(key) + struct.pack("<I", vtype) + (v if isinstance(v, bytes) else _val(vtype, v))


TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "ab", "c", "d"]
LLAMA_META = [
    ("general.architecture", STR, "llama"),
    ("llama.block_count", U32, 1),
    ("llama.embedding_length", U32, 8),
    ("llama.attention.head_count", U32, 2),
    ("llama.attention.head_count_kv", U32, 1),
    ("llama.feed_forward_length", U32, 16),
    ("llama.rope.freq_base", F32, 10000.0),
    ("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
    ("tokenizer.ggml.model", STR, "gpt2"),
    ("tokenizer.ggml.pre", STR, "smollm"),
    ("tokenizer.ggml.tokens", ARR, (STR, TOKENS)),
    ("tokenizer.ggml.token_type", ARR, (I32, [3, 3, 3, 1, 1, 1, 1, 1])),
    ("tokenizer.ggml.merges", ARR, (STR, ["a b"])),
    ("tokenizer.ggml.bos_token_id", U32, 1),
    ("tokenizer.ggml.eos_token_id", U32, 2),
    ("tokenizer.ggml.padding_token_id", U32, 2),
    ("tokenizer.chat_template", STR, "{% for m in messages %}<|im_start|>{% endfor %}"),
]
LLAMA_TENSORS = {
    "token_embd.weight": (8, 8),
    "output_norm.weight": (8,),
    "blk.0.attn_norm.weight": (8,),
    "blk.0.attn_q.weight": (8, 8),
    "blk.0.attn_k.weight": (4, 8),
    "blk.0.attn_v.weight": (4, 8),
    "blk.0.attn_output.weight": (8, 8),
    "blk.0.ffn_norm.weight": (8,),
    "blk.0.ffn_gate.weight": (16, 8),
    "blk.0.ffn_up.weight": (16, 8),
    "blk.0.ffn_down.weight": (8, 16),
}


def gguf_bytes(
    meta=None,
    tensors=None,
    *,
    version=3,
    raw_kvs=b"",
    n_kv=None,
    infos=None,
    n_tensors=None,
    data=None,
) -> bytes:
    """A GGUF file: metadata [(key, type, value)], float32 tensors {name: numpy shape};
    raw_kvs / infos / data (bytes) replace what the arguments would write."""
    meta = LLAMA_META if meta is None else meta
    tensors = LLAMA_TENSORS if tensors is None else tensors
    kvs = b"".join(_kv(*m) for m in meta) + raw_kvs
    rng = np.random.default_rng(0)
    blobs, info, off = [], b"", 0
    for name, shape in tensors.items():
        arr = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        dims = list(reversed(shape))  # fastest axis first
        info += _s(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, 0, off)
        blob = arr.tobytes()
        blob += b"\0" * (-len(blob) % 32)
        blobs.append(blob)
        off += len(blob)
    info = info if infos is None else infos
    head = (
        b"GGUF"
        + struct.pack(
            "<IQQ",
            version,
            len(tensors) if n_tensors is None else n_tensors,
            len(meta) + bool(raw_kvs) if n_kv is None else n_kv,
        )
        + kvs
        + info
    )
    head += b"\0" * (-len(head) % 32)
    return head + (b"".join(blobs) if data is None else data)


# -- positive controls: the small files load, in the guard as well as here ----------------------
def test_valid_files_load(guard, tmp_path, ckpt_bytes):
    ck = tmp_path / "c.safetensors"
    ck.write_bytes(ckpt_bytes)
    accepted(guard, LOAD, ck, backend="numpy")
    accepted(guard, SAFETENSORS, ck)
    pytest.importorskip("tokenizers")
    accepted(guard, MINILM, backend="numpy", folder=make_minilm(tmp_path / "minilm"))
    accepted(guard, GPT2, make_gpt2(tmp_path / "gpt2"))
    pytest.importorskip("gguf")
    g = tmp_path / "t.gguf"
    g.write_bytes(gguf_bytes())
    accepted(guard, GGUF, g)
    accepted(guard, SMOLLM, backend="numpy", max_seq_len=16, path=g)


def test_safetensors_reader_agrees_with_the_library(tmp_path):
    from safetensors.numpy import load_file, save_file

    rng = np.random.default_rng(0)
    arrays = {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "f64": rng.standard_normal(7),
        "i64": np.arange(6).reshape(2, 3),
        "u8": np.arange(5, dtype=np.uint8),
        "f16": np.ones(3, np.float16),
        "empty": np.zeros((0, 4), np.float32),
        "scalar": np.array(2.5, np.float32),
    }
    path = tmp_path / "a.safetensors"
    save_file(arrays, str(path), metadata={"k": "v"})
    mine, meta = _files.read_safetensors(path)
    ref = load_file(str(path))
    assert meta == {"k": "v"} and set(mine) == set(ref)
    for k in ref:
        assert mine[k].dtype == ref[k].dtype and mine[k].shape == ref[k].shape
        np.testing.assert_array_equal(mine[k], ref[k])


def test_minilm_tiny_folder_matches_a_direct_build(tmp_path):
    pytest.importorskip("tokenizers")
    from ferroformer.pretrained.minilm import load_minilm

    model, tok = load_minilm(backend="numpy", folder=make_minilm(tmp_path / "m"))
    t = hf_bert_tensors(np.random.default_rng(0))
    np.testing.assert_array_equal(model.tok_emb.weight.data, t["embeddings.word_embeddings.weight"])
    np.testing.assert_array_equal(
        model.blocks[0].attn.qkv.weight.data[C : 2 * C],
        t["encoder.layer.0.attention.self.key.weight"],
    )
    assert tok.encode("the weather is sunny") == [4, 5, 6, 10, 11]


def test_smollm_tiny_gguf_matches_the_file(tmp_path):
    pytest.importorskip("gguf")
    pytest.importorskip("tokenizers")
    from ferroformer.pretrained.smollm import load_smollm

    g = tmp_path / "t.gguf"
    g.write_bytes(gguf_bytes())
    model, tok = load_smollm(backend="numpy", max_seq_len=16, path=g)
    assert model.config["d_model"] == 8 and model.config["n_kv_heads"] == 1
    assert model.config["tie_embeddings"] and tok.eos_id == 2
    rng = np.random.default_rng(0)
    first = (rng.standard_normal((8, 8)) * 0.1).astype(np.float32)  # token_embd, written first
    np.testing.assert_array_equal(model.tok_emb.table.dequantize(), first)  # its F32 blocks
    assert tok.encode("ab") == [5]


def test_expected_shapes_match_the_models():
    lm = dict(vocab_size=11, max_seq_len=7)  # the decoder-only models and BERT
    seq2seq = dict(src_vocab_size=5, tgt_vocab_size=6, d_model=8, n_heads=2, d_ff=12)
    cases = [
        (GPT, dict(lm, d_model=8, n_heads=2, n_layers=2)),
        (GPT, dict(lm, d_model=8, n_heads=2, n_layers=1, d_ff=5, bias=False)),
        (BERT, dict(lm, d_model=8, n_heads=2, n_layers=2)),
        (BERT, dict(lm, d_model=8, n_heads=2, n_layers=1, n_segments=0, d_ff=3)),
        (Llama, dict(lm, d_model=16, n_heads=4, n_kv_heads=2, n_layers=2)),
        (Llama, dict(lm, d_model=16, n_heads=4, n_layers=1, d_ff=9, tie_embeddings=True)),
        (Transformer, dict(seq2seq, n_encoder_layers=1, n_decoder_layers=2)),
        (
            Transformer,
            dict(
                seq2seq,
                n_encoder_layers=2,
                n_decoder_layers=1,
                norm_first=True,
                activation="swiglu",
                tie_embeddings=False,
            ),
        ),
    ]
    for cls, cfg in cases:
        model = cls(**cfg, backend="numpy", rng=0)
        want, _ = expected_shapes(cls.__name__, model.config)
        assert want == {n: tuple(p.data.shape) for n, p in model.named_parameters()}, cls


# -- paths that are not regular files, and missing files: every reader --------------------------
PATH_READERS = {  # reader -> (function, how it takes the path)
    "load_checkpoint": (LOAD, lambda p: ([p], {"backend": "numpy"})),
    "read_checkpoint": (READ, lambda p: ([p], {})),
    "safetensors": (SAFETENSORS, lambda p: ([p], {})),
    "read_json": (READ_JSON, lambda p: ([p], {"max_bytes": 1 << 20})),
    "tokenizer.json": (WORDPIECE, lambda p: ([p], {})),
    "gguf": (GGUF, lambda p: ([p], {})),
    "smollm": (SMOLLM, lambda p: ([], {"backend": "numpy", "path": p})),
}
FOLDER_READERS = {  # reader of fixed names in a folder -> (function, make folder, kwargs of folder)
    "minilm": (
        MINILM,
        make_minilm,
        lambda f: ([], {"backend": "numpy", "folder": f}),
        ("config.json", "model.safetensors", "tokenizer.json"),
    ),
    "gpt2": (GPT2, make_gpt2, lambda f: ([f], {}), ("encoder.json", "vocab.bpe")),
}
NOT_FILES = ("fifo", "directory", "/dev/zero", "/dev/stdin", "link-to-fifo")
#: readers that import a package of the pretrained extra before they look at the path
NEEDS = {"tokenizer.json": "tokenizers", "gguf": "gguf"}


def path_reader(reader):
    """(function, how it takes the path) of ``reader``; skips where its package is missing
    (the README's test command installs only the test extra)."""
    if reader in NEEDS:
        pytest.importorskip(NEEDS[reader])
    return PATH_READERS[reader]


def _not_a_file(kind, path):
    """Puts a non-regular file of this kind at path (a FIFO, a directory or a link to one)."""
    if path.exists() or path.is_symlink():
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "link-to-fifo":
        os.mkfifo(str(path) + ".fifo")
        path.symlink_to(str(path) + ".fifo")
    else:
        path.symlink_to(kind)


needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")


@needs_fifo
@pytest.mark.parametrize("kind", NOT_FILES)
@pytest.mark.parametrize("reader", sorted(PATH_READERS))
def test_non_regular_paths_are_refused_without_blocking(guard, tmp_path, reader, kind):
    fn, how = path_reader(reader)
    path = tmp_path / "thing"
    _not_a_file(kind, path)
    args, kw = how(path)
    refused(guard, fn, *args, names=path, match="not a regular file", **kw)


@needs_fifo
@pytest.mark.parametrize("kind", NOT_FILES)
@pytest.mark.parametrize(
    "reader,name", [(r, n) for r, v in sorted(FOLDER_READERS.items()) for n in v[3]]
)
def test_non_regular_files_in_a_model_folder_are_refused(guard, tmp_path, reader, name, kind):
    fn, make, how, _ = FOLDER_READERS[reader]
    if reader == "minilm":
        pytest.importorskip("tokenizers")
    folder = make(tmp_path / reader)
    _not_a_file(kind, folder / name)
    args, kw = how(folder)
    refused(guard, fn, *args, names=folder / name, match="not a regular file", **kw)


@pytest.mark.parametrize("reader", sorted(PATH_READERS))
def test_missing_file(guard, tmp_path, reader):
    fn, how = path_reader(reader)
    args, kw = how(tmp_path / "nowhere")
    refused(guard, fn, *args, names=tmp_path / "nowhere", exc="FileNotFoundError", **kw)


@pytest.mark.parametrize(
    "reader,name", [(r, n) for r, v in sorted(FOLDER_READERS.items()) for n in v[3]]
)
def test_missing_file_in_a_model_folder(guard, tmp_path, reader, name):
    fn, make, how, _ = FOLDER_READERS[reader]
    if reader == "minilm":
        pytest.importorskip("tokenizers")
    folder = make(tmp_path / reader)
    (folder / name).unlink()
    args, kw = how(folder)
    refused(guard, fn, *args, names=folder / name, exc="FileNotFoundError", **kw)


def test_missing_file_in_process(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_checkpoint(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        _files.read_json(tmp_path / "a" / "nowhere", max_bytes=10)


# -- safetensors headers: the checkpoint reader and the pretrained weights' reader ---------------
ST_READERS = {"checkpoint": (LOAD, {"backend": "numpy"}), "safetensors": (SAFETENSORS, {})}


def _edit(header, name, **changes):
    h = json.loads(json.dumps(header))
    h[name].update(changes)
    return h


def _hostile_headers(data):
    """(case, file bytes) of damaged safetensors files made from a valid one."""
    header, body = _st_split(data)
    (n,) = struct.unpack("<Q", data[:8])
    names = [k for k in header if k != "__metadata__"]
    first = min(names, key=lambda k: header[k]["data_offsets"][0])
    a, b = header[first]["data_offsets"]
    second = min((k for k in names if k != first), key=lambda k: header[k]["data_offsets"][0])
    deep = b"[" * 100_000 + b"]" * 100_000
    yield "empty file", b""
    yield "shorter than the length field", data[:5]
    yield "header length larger than the file", struct.pack("<Q", len(data)) + data[8:]
    yield "header length 2**62", struct.pack("<Q", 2**62) + data[8:]
    yield "header length 2**64-1", b"\xff" * 8 + data[8:]
    yield "truncated in the header", data[: 8 + n // 2]
    yield "truncated in the data", data[:-3]
    yield "data after the last tensor", data + b"\0" * 16
    yield "wrong magic (PNG)", b"\x89PNG\r\n\x1a\n" + b"\0" * 64
    yield "wrong magic (GGUF)", gguf_bytes(tensors={}, meta=[])
    yield "header not JSON", _st_join(b"not json!!", body)
    yield "header not UTF-8", _st_join(b'{"\xff\xfe": 1}', body)
    yield "header a JSON list", _st_join(b"[1, 2]", body)
    yield "header nested deep", _st_join(deep, body)
    yield (
        "tensor entry nested deep",
        _st_join(json.dumps(_edit(header, first, shape=[0])).encode().replace(b"[0]", deep), body),
    )
    yield (
        "offsets past the data",
        _st_join(_edit(header, first, data_offsets=[a, len(body) + 400]), body),
    )
    yield "offsets 2**70", _st_join(_edit(header, first, data_offsets=[2**70, 2**70 + b - a]), body)
    yield "offsets negative", _st_join(_edit(header, first, data_offsets=[-8, b - a - 8]), body)
    yield "offsets reversed", _st_join(_edit(header, first, data_offsets=[b, a]), body)
    yield "offsets not ints", _st_join(_edit(header, first, data_offsets=[str(a), b]), body)
    yield (
        "overlapping tensors",
        _st_join(
            _edit(
                header,
                second,
                data_offsets=[
                    a,
                    a + header[second]["data_offsets"][1] - header[second]["data_offsets"][0],
                ],
            ),
            body,
        ),
    )
    yield "a hole in the data", _st_join(_edit(header, first, data_offsets=[a + 4, b]), body)
    yield (
        "shape that does not fit its bytes",
        _st_join(_edit(header, first, shape=[10**9, 10**9]), body),
    )
    yield (
        "shape product overflows 64 bits",
        _st_join(_edit(header, first, shape=[2**40, 2**40, 2**40, 2**40]), body),
    )
    yield "shape of a million dimensions", _st_join(_edit(header, first, shape=[1] * 10**6), body)
    yield "negative dimension", _st_join(_edit(header, first, shape=[-1, 3]), body)
    yield "float dimension", _st_join(_edit(header, first, shape=[2.0, 3]), body)
    yield "bool dimension", _st_join(_edit(header, first, shape=[True]), body)
    yield "unknown dtype", _st_join(_edit(header, first, dtype="F128"), body)
    yield "dtype not a string", _st_join(_edit(header, first, dtype=["F32"]), body)
    yield "extra key in an entry", _st_join(_edit(header, first, evil=1), body)
    h = json.loads(json.dumps(header))
    h["__metadata__"] = {"format": 3}
    yield "metadata value not a string", _st_join(h, body)
    h["__metadata__"] = ["format"]
    yield "metadata not an object", _st_join(h, body)


def assert_files_refused(guard, tmp_path, cases, fn, **kw):
    """Each case's bytes written to a .safetensors file, read by ``fn`` under the guard:
    every one a ValueError naming its file."""
    failures = []
    for case, data in cases.items():
        path = tmp_path / f"{case.replace(' ', '_')}.safetensors"
        path.write_bytes(data)
        out = guard.call(fn, path, **kw)
        if out["error"] != "ValueError" or str(path) not in out["message"]:
            failures.append((case, out))
    assert not failures, failures


@pytest.fixture(scope="module")
def hostile_headers(ckpt_bytes):
    return dict(_hostile_headers(ckpt_bytes))


@pytest.mark.parametrize("reader", sorted(ST_READERS))
def test_hostile_safetensors_headers(guard, tmp_path, hostile_headers, reader):
    fn, kw = ST_READERS[reader]
    assert_files_refused(guard, tmp_path, hostile_headers, fn, **kw)


def test_hostile_header_names_the_tensor(guard, tmp_path, ckpt_bytes):
    header, body = _st_split(ckpt_bytes)
    path = tmp_path / "c.safetensors"
    path.write_bytes(_st_join(_edit(header, "model/wte.weight", shape=[2**40, 2**40]), body))
    for fn, kw in ST_READERS.values():
        refused(guard, fn, path, names=path, match="model/wte.weight", **kw)


# -- checkpoint metadata: config against the tensors, types, JSON ---------------------------
def _with_meta(data, **meta):
    header, body = _st_split(data)
    for k, v in meta.items():
        if v is None:
            header["__metadata__"].pop(k, None)
        else:
            header["__metadata__"][k] = v
    return _st_join(header, body)


def _with_config(data, **changes):
    header, _ = _st_split(data)
    cfg = json.loads(header["__metadata__"]["model_config"])
    cfg.update(changes)
    return _with_meta(data, model_config=json.dumps(cfg))


def _checkpoint_of(model, tmp_path, name="m.safetensors") -> bytes:
    path = tmp_path / name
    save_checkpoint(path, model)
    return path.read_bytes()


def test_config_is_bounded_by_the_tensors(guard, tmp_path, ckpt_bytes):
    """A config claiming sizes its tensors do not have is refused before the model is
    built: none of these may allocate (the guard's memory limit would turn that into
    MemoryError) or take long."""
    transformer = tiny_transformer(5, 6, d_ff=8, max_seq_len=8)
    llama = Llama(11, max_seq_len=8, d_model=8, n_heads=2, n_layers=1, backend="numpy", rng=0)
    t_bytes = _checkpoint_of(transformer, tmp_path, "t")
    l_bytes = _checkpoint_of(llama, tmp_path, "l")
    cases = {
        "d_model 10**9": _with_config(ckpt_bytes, d_model=10**9),
        "d_model 2**20": _with_config(ckpt_bytes, d_model=2**20, n_heads=2),
        "vocab 10**12": _with_config(ckpt_bytes, vocab_size=10**12),
        "vocab 2**24": _with_config(ckpt_bytes, vocab_size=2**24),
        "n_layers 10**6": _with_config(ckpt_bytes, n_layers=10**6),
        "n_layers 2": _with_config(ckpt_bytes, n_layers=2),
        "d_ff 2**24": _with_config(ckpt_bytes, d_ff=2**24),
        "max_seq_len 2**24": _with_config(ckpt_bytes, max_seq_len=2**24),
        "n_heads 0": _with_config(ckpt_bytes, n_heads=0),
        "n_heads 3": _with_config(ckpt_bytes, n_heads=3),
        "bias off": _with_config(ckpt_bytes, bias=False),
        "transformer max_seq_len 2**24": _with_config(t_bytes, max_seq_len=2**24),
        "transformer layers 10**6": _with_config(t_bytes, n_decoder_layers=10**6),
        "transformer unknown activation": _with_config(t_bytes, activation="evil"),
        "llama max_seq_len 2**24": _with_config(l_bytes, max_seq_len=2**24),
        "llama n_kv_heads 3": _with_config(l_bytes, n_kv_heads=3),
        "llama tied in the config only": _with_config(l_bytes, tie_embeddings=True),
        "another model class": _with_meta(ckpt_bytes, model_class="BERT"),
    }
    assert_files_refused(guard, tmp_path, cases, LOAD, backend="numpy")


def test_wrong_types_and_json_in_checkpoint_metadata(guard, tmp_path, ckpt_bytes):
    deep = "[" * 100_000 + "]" * 100_000
    deep_obj = '{"a":' * 5000 + "1" + "}" * 5000
    cases = {
        "model_config deep": _with_meta(ckpt_bytes, model_config=deep),
        "model_config deep object": _with_meta(ckpt_bytes, model_config=deep_obj),
        "extra deep": _with_meta(ckpt_bytes, extra=deep),
        "rng deep": _with_meta(ckpt_bytes, rng=deep),
        "step deep": _with_meta(ckpt_bytes, step=deep),
        "model_config a list": _with_meta(ckpt_bytes, model_config="[1, 2]"),
        "model_config a string": _with_meta(ckpt_bytes, model_config='"GPT"'),
        "model_config not JSON": _with_meta(ckpt_bytes, model_config="{d_model: 8"),
        "d_model a string": _with_config(ckpt_bytes, d_model="8"),
        "d_model a float": _with_config(ckpt_bytes, d_model=8.0),
        "d_model a bool": _with_config(ckpt_bytes, d_model=True),
        "d_model null": _with_config(ckpt_bytes, d_model=None),
        "d_model a list": _with_config(ckpt_bytes, d_model=[8]),
        "unknown config key": _with_config(ckpt_bytes, __import__="os"),
        "step a float": _with_meta(ckpt_bytes, step="1.5"),
        "step a bool": _with_meta(ckpt_bytes, step="true"),
        "step negative": _with_meta(ckpt_bytes, step="-3"),
        "rng a list": _with_meta(ckpt_bytes, rng="[]"),
        "rng state unknown": _with_meta(ckpt_bytes, rng='{"model": {"x": {"bit_generator": "E"}}}'),
        "extra a list": _with_meta(ckpt_bytes, extra="[1]"),
        "format missing": _with_meta(ckpt_bytes, format=None),
        "format wrong": _with_meta(ckpt_bytes, format="pickle"),
        "model_class missing": _with_meta(ckpt_bytes, model_class=None),
        "model_class unknown": _with_meta(ckpt_bytes, model_class="os.system"),
        "model_config missing": _with_meta(ckpt_bytes, model_config=None),
    }
    header, body = _st_split(ckpt_bytes)
    h = json.loads(json.dumps(header))
    h["model/wte.weight"]["dtype"] = "I32"  # integer weights (same byte size)
    cases["integer weights"] = _st_join(h, body)
    h = json.loads(json.dumps(header))
    h["model/evil"] = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
    cases["an unexpected tensor"] = _st_join(h, body)
    assert_files_refused(guard, tmp_path, cases, LOAD, backend="numpy")


def test_loads_json_bounds_depth_without_recursion_error():
    for text in [
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 10_000 + "1" + "}" * 10_000,
        "[" * 65 + "]" * 65,
    ]:
        with pytest.raises(ValueError, match="nested more than 64 deep"):
            _files.loads_json(text, "where")
    assert _files.loads_json("[" * 64 + "]" * 64, "where") == json.loads("[" * 64 + "]" * 64)
    with pytest.raises(ValueError, match="not UTF-8"):
        _files.loads_json(b'{"\xff": 1}', "where")


# -- MiniLM: config.json, tokenizer.json, the weights against the config -------------------------
def test_minilm_hostile_config(guard, tmp_path):
    pytest.importorskip("tokenizers")
    deep = "[" * 100_000 + "]" * 100_000
    cases = {
        "hidden_size 10**6": {"hidden_size": 10**6},
        "vocab 10**12": {"vocab_size": 10**12},
        "vocab 2**24": {"vocab_size": 2**24},
        "layers 10**9": {"num_hidden_layers": 10**9},
        "layers 2": {"num_hidden_layers": 2},
        "positions 2**24": {"max_position_embeddings": 2**24},
        "intermediate 2**20": {"intermediate_size": 2**20},
        "heads 3": {"num_attention_heads": 3},
        "heads 0": {"num_attention_heads": 0},
        "hidden a string": {"hidden_size": "8"},
        "hidden a float": {"hidden_size": 8.0},
        "hidden a bool": {"hidden_size": True},
        "hidden null": {"hidden_size": None},
        "eps a string": {"layer_norm_eps": "1e-12"},
        "eps negative": {"layer_norm_eps": -1.0},
        "activation relu": {"hidden_act": "relu"},
        "segments 3": {"type_vocab_size": 3},
        "no vocab": {"vocab_size": "DELETE"},
    }
    failures = []
    for case, change in cases.items():
        folder = make_minilm(tmp_path / case.replace(" ", "_"))
        cfg = dict(HF_CONFIG, **change)
        cfg = {k: v for k, v in cfg.items() if v != "DELETE"}
        (folder / "config.json").write_text(json.dumps(cfg))
        out = guard.call(MINILM, backend="numpy", folder=folder)
        if out["error"] != "ValueError" or str(folder) not in out["message"]:
            failures.append((case, out))
    raw = {
        "deep": deep.encode(),
        "a list": b"[1]",
        "not JSON": b"{hidden_size: 8}",
        "not UTF-8": b'{"hidden_act": "\xff"}',
        "empty": b"",
        "huge": b" " * (2 << 20),
    }
    for case, data in raw.items():
        folder = make_minilm(tmp_path / f"raw_{case.replace(' ', '_')}")
        (folder / "config.json").write_bytes(data)
        out = guard.call(MINILM, backend="numpy", folder=folder)
        if out["error"] != "ValueError" or str(folder / "config.json") not in out["message"]:
            failures.append((case, out))
    assert not failures, failures


def test_minilm_hostile_weights_and_tokenizer(guard, tmp_path):
    pytest.importorskip("tokenizers")
    from safetensors.numpy import save_file

    failures = []

    def check(case, folder, name):
        out = guard.call(MINILM, backend="numpy", folder=folder)
        if out["error"] != "ValueError" or str(folder / name) not in out["message"]:
            failures.append((case, out))

    def weights(case, mutate):
        folder = make_minilm(tmp_path / f"w_{case.replace(' ', '_')}")
        t = hf_bert_tensors(np.random.default_rng(0))
        mutate(t)
        save_file(t, str(folder / "model.safetensors"))
        check(case, folder, "model.safetensors")

    weights("missing tensor", lambda t: t.pop("encoder.layer.0.output.dense.weight"))
    weights(
        "wrong shape",
        lambda t: t.update({"encoder.layer.0.output.dense.weight": np.zeros((C, 3), np.float32)}),
    )
    weights(
        "q k v differ",
        lambda t: t.update(
            {"encoder.layer.0.attention.self.key.weight": np.zeros((3, C), np.float32)}
        ),
    )
    weights(
        "integer weights", lambda t: t.update({"embeddings.LayerNorm.weight": np.ones(C, np.int32)})
    )
    weights("NaN weights", lambda t: t["embeddings.LayerNorm.bias"].__setitem__(0, np.nan))
    weights(
        "vocab rows differ",
        lambda t: t.update(
            {"embeddings.word_embeddings.weight": np.zeros((V_BERT + 1, C), np.float32)}
        ),
    )
    good = (make_minilm(tmp_path / "ref") / "model.safetensors").read_bytes()
    for case, data in [
        ("truncated", good[: len(good) // 2]),
        ("header length", b"\xff" * 8 + good[8:]),
        ("not safetensors", b"GGUF" + good[4:]),
    ]:
        folder = make_minilm(tmp_path / f"raw_{case.replace(' ', '_')}")
        (folder / "model.safetensors").write_bytes(data)
        check(case, folder, "model.safetensors")
    deep = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    for case, data in [
        ("deep", deep),
        ("not JSON", b"{model"),
        ("a list", b"[]"),
        ("not UTF-8", b'{"version": "\xff"}'),
        ("not a tokenizer", b'{"a": 1}'),
    ]:
        folder = make_minilm(tmp_path / f"tok_{case.replace(' ', '_')}")
        (folder / "tokenizer.json").write_bytes(data)
        check(f"tokenizer {case}", folder, "tokenizer.json")
        out = guard.call(WORDPIECE, folder / "tokenizer.json")
        if out["error"] != "ValueError" or str(folder / "tokenizer.json") not in out["message"]:
            failures.append((f"wordpiece {case}", out))
    assert not failures, failures


# -- GPT-2 tokenizer files ------------------------------------------------------------------
def test_gpt2_hostile_files(guard, tmp_path):
    pytest.importorskip("tokenizers")
    files = {
        "encoder.json": {
            "deep": b"[" * 100_000 + b"]" * 100_000,
            "a list": b'["a", "b"]',
            "empty object": b"{}",
            "id a string": b'{"a": "0", "b": 1}',
            "id a bool": b'{"a": true, "b": 1}',
            "id negative": b'{"a": -1, "b": 1}',
            "id 2**40": b'{"a": 1099511627776, "b": 1}',
            "id twice": b'{"a": 0, "b": 0}',
            "not UTF-8": b'{"\xff": 0}',
            "not JSON": b'{"a": 0',
        },
        "vocab.bpe": {
            "three tokens": b"#version: 0.2\na b c\n",
            "one token": b"#version: 0.2\nab\n",
            "not UTF-8": b"#version: 0.2\n\xff \xfe\n",
            "unknown tokens": b"#version: 0.2\nx y\n",
        },
    }
    cases = {(name, case): data for name, some in files.items() for case, data in some.items()}
    failures = []
    for (name, case), data in cases.items():
        folder = make_gpt2(tmp_path / f"{name}_{case.replace(' ', '_')}")
        (folder / name).write_bytes(data)
        out = guard.call(GPT2, folder)
        if out["error"] != "ValueError" or str(folder) not in out["message"]:
            failures.append((name, case, out))
    assert not failures, failures


# -- GGUF ------------------------------------------------------------------------------------
def _info(name, dims, ggml_type=0, offset=0) -> bytes:
    return _s(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, ggml_type, offset)


def _hostile_ggufs():
    good = gguf_bytes()
    one = {"token_embd.weight": (8, 8)}
    data = np.zeros(64, np.float32).tobytes()
    yield "empty", b""
    yield "truncated header", good[:20]
    for frac in (0.1, 0.3, 0.5, 0.9, 0.999):
        yield f"truncated at {frac}", good[: int(len(good) * frac)]
    yield "wrong magic", b"GGUX" + good[4:]
    yield "safetensors magic", struct.pack("<Q", 2) + b"{}" + b"\0" * 64
    yield "version 99", gguf_bytes(version=99)
    yield "big-endian version", gguf_bytes(version=3 << 24)
    yield "kv count 2**62", gguf_bytes(n_kv=2**62)
    yield "tensor count 2**62", gguf_bytes(n_tensors=2**62)
    yield "kv count one too many", gguf_bytes(n_kv=len(LLAMA_META) + 1)
    yield "tensor count one too many", gguf_bytes(n_tensors=len(LLAMA_TENSORS) + 1)
    yield (
        "uint8 array of 2**60",
        gguf_bytes(raw_kvs=_s("evil") + struct.pack("<IIQ", ARR, 0, 2**60)),
    )
    yield (
        "string array of 2**40",
        gguf_bytes(raw_kvs=_s("evil") + struct.pack("<IIQ", ARR, STR, 2**40)),
    )
    yield (
        "array of empty arrays 2**40",
        gguf_bytes(
            raw_kvs=_s("evil") + struct.pack("<IIQ", ARR, ARR, 2**40) + struct.pack("<IQ", 0, 0) * 4
        ),
    )
    nested = struct.pack("<I", ARR)
    for _ in range(50):
        nested += struct.pack("<IQ", ARR, 1)
    yield (
        "arrays nested 50 deep",
        gguf_bytes(raw_kvs=_s("evil") + nested + struct.pack("<IQ", 0, 0)),
    )
    yield "string of 2**63 bytes", gguf_bytes(raw_kvs=_s("evil") + struct.pack("<IQ", STR, 2**63))
    yield "key of 2**63 bytes", gguf_bytes(raw_kvs=struct.pack("<Q", 2**63) + b"k")
    yield "unknown value type", gguf_bytes(raw_kvs=_s("evil") + struct.pack("<II", 77, 0))
    yield (
        "unknown array element type",
        gguf_bytes(raw_kvs=_s("evil") + struct.pack("<IIQ", ARR, 77, 1)),
    )
    yield "key not UTF-8", gguf_bytes(raw_kvs=_s(b"\xff\xfe") + struct.pack("<II", U32, 1))
    yield (
        "string value not UTF-8",
        gguf_bytes(raw_kvs=_s("evil") + struct.pack("<I", STR) + _s(b"\xff")),
    )
    yield "empty key", gguf_bytes(raw_kvs=_kv("", U32, 1))
    yield "key twice", gguf_bytes(raw_kvs=_kv("llama.block_count", U32, 1))
    yield "alignment 3", gguf_bytes(raw_kvs=_kv("general.alignment", U32, 3))
    yield "alignment a string", gguf_bytes(raw_kvs=_kv("general.alignment", STR, "32"))
    yield (
        "tensor name twice",
        gguf_bytes(tensors=one, infos=_info("t", [8, 8]) * 2, n_tensors=2, data=data * 2),
    )
    yield "five dimensions", gguf_bytes(tensors=one, infos=_info("t", [1, 1, 1, 8, 8]), data=data)
    yield (
        "2**31 dimensions",
        gguf_bytes(tensors=one, infos=_s("t") + struct.pack("<I", 2**31), data=data),
    )
    yield "dims overflow 64 bits", gguf_bytes(tensors=one, infos=_info("t", [2**40] * 4), data=data)
    yield (
        "dims larger than the file",
        gguf_bytes(tensors=one, infos=_info("t", [2**20, 2**20]), data=data),
    )
    yield "zero dimension", gguf_bytes(tensors=one, infos=_info("t", [0, 8]), data=data)
    yield "unknown tensor type", gguf_bytes(tensors=one, infos=_info("t", [8, 8], 999), data=data)
    yield "blocks do not divide", gguf_bytes(tensors=one, infos=_info("t", [7, 8], 2), data=data)
    yield "offset not aligned", gguf_bytes(tensors=one, infos=_info("t", [8, 8], 0, 4), data=data)
    yield (
        "data past the end",
        gguf_bytes(tensors=one, infos=_info("t", [8, 8], 0, 2**40), data=data),
    )
    yield "data one block short", gguf_bytes(tensors=one, data=data[:-32])
    yield (
        "overlapping tensors",
        gguf_bytes(
            tensors=one, n_tensors=2, data=data, infos=_info("t", [8, 8]) + _info("u", [8], 0, 32)
        ),
    )


@pytest.fixture(scope="module")
def hostile_ggufs():
    pytest.importorskip("gguf")
    return dict(_hostile_ggufs())


@pytest.mark.parametrize("fn", [GGUF, SMOLLM])
def test_hostile_gguf_structure(guard, tmp_path, hostile_ggufs, fn):
    failures = []
    for case, data in hostile_ggufs.items():
        path = tmp_path / f"{case.replace(' ', '_').replace('*', '')}.gguf"
        path.write_bytes(data)
        args, kw = ([path], {}) if fn == GGUF else ([], {"backend": "numpy", "path": path})
        out = guard.call(fn, *args, **kw)
        if out["error"] != "ValueError" or str(path) not in out["message"]:
            failures.append((case, out))
    assert not failures, failures


def _meta(**changes):
    out = []
    for key, vtype, value in LLAMA_META:
        if key in changes:
            if changes[key] is None:
                continue
            vtype, value = changes[key]
        out.append((key, vtype, value))
    return out


def test_smollm_metadata_is_bounded_by_the_tensors(guard, tmp_path):
    pytest.importorskip("gguf")
    pytest.importorskip("tokenizers")
    tokens = TOKENS + [f"t{i}" for i in range(8)]
    cases = {
        "embedding_length 10**6": _meta(**{"llama.embedding_length": (U32, 10**6)}),
        "embedding_length 16": _meta(**{"llama.embedding_length": (U32, 16)}),
        "block_count 10**9": _meta(**{"llama.block_count": (U32, 10**9)}),
        "block_count 2": _meta(**{"llama.block_count": (U32, 2)}),
        "feed_forward 2**24": _meta(**{"llama.feed_forward_length": (U32, 2**24)}),
        "head_count 3": _meta(**{"llama.attention.head_count": (U32, 3)}),
        "head_count 0": _meta(**{"llama.attention.head_count": (U32, 0)}),
        "kv heads 2": _meta(**{"llama.attention.head_count_kv": (U32, 2)}),
        "more tokens than rows": _meta(**{"tokenizer.ggml.tokens": (ARR, (STR, tokens))}),
        "embedding_length a string": _meta(**{"llama.embedding_length": (STR, "8")}),
        "embedding_length a float": _meta(**{"llama.embedding_length": (F32, 8.0)}),
        "embedding_length missing": _meta(**{"llama.embedding_length": None}),
        "rope base a string": _meta(**{"llama.rope.freq_base": (STR, "1e4")}),
        "eps NaN": _meta(**{"llama.attention.layer_norm_rms_epsilon": (F32, float("nan"))}),
        "architecture gpt2": _meta(**{"general.architecture": (STR, "gpt2")}),
        "tokens missing": _meta(**{"tokenizer.ggml.tokens": None}),
        "tokens not strings": _meta(**{"tokenizer.ggml.tokens": (ARR, (U32, list(range(8))))}),
        "tokens a string": _meta(**{"tokenizer.ggml.tokens": (STR, "abc")}),
        "token repeated": _meta(**{"tokenizer.ggml.tokens": (ARR, (STR, [*TOKENS[:-1], "a"]))}),
        "token types short": _meta(**{"tokenizer.ggml.token_type": (ARR, (I32, [1]))}),
        "merge of one token": _meta(**{"tokenizer.ggml.merges": (ARR, (STR, ["ab"]))}),
        "merge unknown tokens": _meta(**{"tokenizer.ggml.merges": (ARR, (STR, ["x y"]))}),
        "eos id out of range": _meta(**{"tokenizer.ggml.eos_token_id": (U32, 10**6)}),
        "eos id a string": _meta(**{"tokenizer.ggml.eos_token_id": (STR, "2")}),
        "chat template a number": _meta(**{"tokenizer.chat_template": (U32, 1)}),
    }
    failures = []
    for case, meta in cases.items():
        path = tmp_path / f"{case.replace(' ', '_').replace('*', '')}.gguf"
        path.write_bytes(gguf_bytes(meta))
        out = guard.call(SMOLLM, backend="numpy", max_seq_len=16, path=path)
        if out["error"] != "ValueError" or str(path) not in out["message"]:
            failures.append((case, out))
    tensors = dict(LLAMA_TENSORS)
    tensors["blk.0.ffn_up.weight"] = (8, 8)  # gate and up differ
    path = tmp_path / "stack.gguf"
    path.write_bytes(gguf_bytes(tensors=tensors))
    out = guard.call(SMOLLM, backend="numpy", max_seq_len=16, path=path)
    if out["error"] != "ValueError" or str(path) not in out["message"]:
        failures.append(("gate and up differ", out))
    tensors = dict(LLAMA_TENSORS)
    del tensors["blk.0.attn_k.weight"]
    path = tmp_path / "missing.gguf"
    path.write_bytes(gguf_bytes(tensors=tensors))
    out = guard.call(SMOLLM, backend="numpy", max_seq_len=16, path=path)
    if out["error"] != "ValueError" or str(path) not in out["message"]:
        failures.append(("missing tensor", out))
    assert not failures, failures


# -- atomic checkpoint writes ------------------------------------------------------------------
def test_save_writes_a_temp_file_in_the_same_directory_fsyncs_then_replaces(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        try:
            events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        except OSError:
            events.append(("fsync", None))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.fspath(src), os.fspath(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, tiny_gpt())
    replaces = [e for e in events if e[0] == "replace"]
    assert len(replaces) == 1
    _, src, dst = replaces[0]
    assert os.path.dirname(os.path.abspath(src)) == str(tmp_path) and dst == str(path)
    assert os.path.basename(src).startswith(".ckpt.safetensors.") and src.endswith(".tmp")
    first_fsync = events.index(next(e for e in events if e[0] == "fsync"))
    assert first_fsync < events.index(replaces[0])  # the data is on disk before the rename
    if events[first_fsync][1] is not None:
        assert events[first_fsync][1] == src
    assert os.listdir(tmp_path) == ["ckpt.safetensors"]


class _HalfWriter:
    """A file whose write puts half of the data down, then fails as a full disk would."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        self.f.write(bytes(data[: len(data) // 2]))
        self.f.flush()
        raise OSError(28, "No space left on device (simulated)")

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_a_write_failing_midway_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, tiny_gpt(0), step=1)
    before = path.read_bytes()
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda *a, **k: _HalfWriter(real_fdopen(*a, **k)))
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, tiny_gpt(1), step=2)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path, backend="numpy").step == 1
    assert os.listdir(tmp_path) == ["ckpt.safetensors"]  # the partial temp file is gone


def test_a_crash_midway_leaves_the_old_checkpoint(tmp_path):
    """A process killed in the middle of a save (os._exit after half the bytes):
    the target still holds the previous checkpoint, complete."""
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, tiny_gpt(0), step=1)
    before = path.read_bytes()
    script = textwrap.dedent(f"""
        import os
        from ferroformer.checkpoint import save_checkpoint
        from ferroformer.models import GPT
        real_fdopen = os.fdopen
        class Crash:
            def __init__(self, f): self.f = f
            def write(self, data):
                self.f.write(bytes(data[:len(data) // 2])); self.f.flush(); os._exit(7)
            def __getattr__(self, n): return getattr(self.f, n)
            def __enter__(self): return self
            def __exit__(self, *e): self.f.close()
        os.fdopen = lambda *a, **k: Crash(real_fdopen(*a, **k))
        save_checkpoint({str(path)!r}, GPT(11, max_seq_len=8, d_model=8, n_heads=2, n_layers=1,
                                           backend="numpy", rng=1), step=2)
    """)
    rc = subprocess.run([sys.executable, "-c", script], timeout=120).returncode
    assert rc == 7
    assert path.read_bytes() == before
    assert read_checkpoint(path)[1]["step"] == "1"
    leftovers = [n for n in os.listdir(tmp_path) if n != "ckpt.safetensors"]
    assert all(n.startswith(".ckpt.safetensors.") and n.endswith(".tmp") for n in leftovers)
    save_checkpoint(path, tiny_gpt(1), step=3)  # and the next save goes through
    assert load_checkpoint(path, backend="numpy").step == 3
