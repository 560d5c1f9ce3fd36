"""ferroformer.save_gguf: GPT and Llama models, float and quantized to every type,
written and read back by load_gguf to the same logits (the blocks written as they
are), with the metadata llama.cpp reads; files loaded from GGUF (mixed block types
within a layer, SmolLM2) saved and loaded again unchanged; the tokenizer and chat
template (rendered by jinja2) carried over; the write atomic."""

from __future__ import annotations

import os

import numpy as np
import pytest
from test_quant_gguf import llama_file

import ferroformer as ff
from ferroformer.models import GPT, Llama
from ferroformer.quant import QUANTIZERS, QuantizedLinear

from helpers import assert_close

gguf = pytest.importorskip("gguf")
pytest.importorskip("jinja2")

IDS = np.array([[1, 5, 9, 200, 3, 77, 12]])
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def small(cls, tied=True):
    if cls is Llama:
        return Llama(
            vocab_size=257,
            max_seq_len=32,
            d_model=256,
            n_heads=4,
            n_kv_heads=2,
            n_layers=2,
            d_ff=512,
            rope_base=5e4,
            norm_eps=1e-5,
            tie_embeddings=tied,
            backend="numpy",
            rng=3,
        ).eval()
    return GPT(
        vocab_size=257, max_seq_len=32, d_model=256, n_heads=4, n_layers=2, backend="numpy", rng=3
    ).eval()


def reader_meta(path):
    r = gguf.GGUFReader(os.fspath(path))
    meta = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        try:
            meta[k] = f.contents()
        except Exception:  # a field the reader version cannot render
            pass
    return meta, {t.name: t.tensor_type.name for t in r.tensors}


@pytest.mark.parametrize(
    "cls,tied", [(Llama, True), (Llama, False), (GPT, True)], ids=["llama-tied", "llama", "gpt2"]
)
@pytest.mark.parametrize("qtype", [None, *QUANTIZERS])
def test_round_trip_gives_the_same_logits(tmp_path, cls, tied, qtype):
    model = small(cls, tied)
    if qtype is not None:
        ff.quantize(model, qtype, activations="float")
    want = model(IDS)
    path = tmp_path / "m.gguf"
    with pytest.warns(UserWarning, match="tokenizer model 'none'"):
        ff.save_gguf(model, path)
        back, tok = ff.load_gguf(path, backend="numpy", activations="float")
    assert tok is None
    # the same weights; q, k, v (gate, up) now three (two) products instead of one
    assert_close(back(IDS), want, rtol=1e-5, atol=1e-5)
    meta, types = reader_meta(path)
    arch = "llama" if cls is Llama else "gpt2"
    assert meta["general.architecture"] == arch
    assert meta[f"{arch}.block_count"] == 2 and meta[f"{arch}.embedding_length"] == 256
    assert meta[f"{arch}.context_length"] == 32 and meta[f"{arch}.attention.head_count"] == 4
    assert ("output.weight" in types) == (cls is Llama and not tied)
    matrix = "blk.0.attn_q.weight" if cls is Llama else "blk.0.attn_qkv.weight"
    assert types[matrix] == (qtype or "F32")
    assert types["blk.1.attn_norm.weight"] == "F32"
    if cls is Llama:
        assert meta["llama.attention.head_count_kv"] == 2
        assert meta["llama.rope.freq_base"] == pytest.approx(5e4)
        assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
        assert meta["llama.rope.dimension_count"] == 64
    if qtype is not None:  # the blocks themselves, not a decoded copy
        lin = back.blocks[1].ff.fc2
        assert isinstance(lin, QuantizedLinear) and lin.qtype == qtype
        np.testing.assert_array_equal(lin.parts[0].data, model.blocks[1].ff.fc2.parts[0].data)


@pytest.mark.parametrize("tied", [False, True])
def test_a_loaded_file_with_mixed_types_saves_unchanged(tmp_path, tied):
    path, _ = llama_file(tmp_path, tied=tied)
    model, tok = ff.load_gguf(path, backend="numpy", activations="float")
    out = tmp_path / "again.gguf"
    ff.save_gguf(model, out, tokenizer=tok)
    back, tok2 = ff.load_gguf(out, backend="numpy", activations="float")
    np.testing.assert_array_equal(back(IDS), model(IDS))
    _, t1 = reader_meta(path)
    _, t2 = reader_meta(out)
    assert t1 == t2  # every tensor in its own type, q/k/v and gate/up split back
    assert tok2.encode(" t t") == tok.encode(" t t") and tok2.eos_id == tok.eos_id == 2
    assert tok2.bos_id == 1


def test_the_tokenizer_and_chat_template_go_with_the_model(tmp_path):
    path, _ = llama_file(tmp_path)
    model, tok = ff.load_gguf(path, backend="numpy", activations="float")
    tok.chat_template = CHATML
    out = tmp_path / "chat.gguf"
    ff.save_gguf(model, out, tokenizer=tok)
    meta, _ = reader_meta(out)
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt2"
    assert meta["tokenizer.ggml.merges"] == ["Ġ t"] and meta["tokenizer.chat_template"] == CHATML
    assert len(meta["tokenizer.ggml.tokens"]) == 257
    _, tok2 = ff.load_gguf(out, backend="numpy", activations="float")
    msgs = [{"role": "user", "content": "hi"}]
    assert tok2.apply_chat_template(msgs) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tok2.apply_chat_template(msgs, add_generation_prompt=False).endswith("<|im_end|>\n")


def test_chat_templates_are_sandboxed_and_may_raise(tmp_path):
    path, _ = llama_file(tmp_path)
    _, tok = ff.load_gguf(path, backend="numpy", activations="float")
    tok.chat_template = "{{ raise_exception('only user turns') }}"
    with pytest.raises(ValueError, match="only user turns"):
        tok.apply_chat_template([{"role": "user", "content": "x"}])
    tok.chat_template = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(ValueError, match="chat template"):
        tok.apply_chat_template([])
    tok.chat_template = "{% for %}"
    with pytest.raises(ValueError, match="does not compile"):
        tok.apply_chat_template([])
    tok.chat_template = "{{ bos_token }}{% for m in messages %}{{ m.content }}\n{% endfor %}"
    bos = tok.inner.id_to_token(tok.bos_id)  # the byte-level symbol of byte 1
    assert tok.apply_chat_template([{"role": "user", "content": "a"}]) == bos + "a\n"


def test_smollm_load_save_load_gives_the_same_logits(tmp_path):
    from ferroformer.pretrained.files import MissingPackage, package_path

    try:
        src = package_path("SmolLM2-135M-Instruct")
    except MissingPackage as e:
        pytest.skip(str(e))
    model, tok = ff.load_gguf(src, backend="numpy", activations="float", max_seq_len=64)
    out = tmp_path / "smol.gguf"
    ff.save_gguf(model, out, tokenizer=tok)
    back, tok2 = ff.load_gguf(out, backend="numpy", activations="float", max_seq_len=64)
    ids = np.array([tok.encode("The capital of France is")])
    np.testing.assert_array_equal(back(ids), model(ids))
    assert tok2.encode("Hello, world! 123") == tok.encode("Hello, world! 123")
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    assert tok2.apply_chat_template(msgs) == tok.apply_chat_template(msgs)
    m1, t1 = reader_meta(src)
    m2, t2 = reader_meta(out)
    assert t1 == t2
    assert m2["llama.context_length"] == 64  # the model's max_seq_len
    for key in (
        "llama.rope.freq_base",
        "llama.embedding_length",
        "llama.feed_forward_length",
        "llama.attention.head_count_kv",
        "llama.attention.layer_norm_rms_epsilon",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.chat_template",
    ):
        assert m2[key] == m1[key], key


def test_the_write_is_atomic_and_refuses_what_it_cannot_write(tmp_path, monkeypatch):
    model = small(Llama)
    out = tmp_path / "m.gguf"
    out.write_bytes(b"old")
    with pytest.raises(TypeError, match="save_gguf: writes GPT and Llama"):
        ff.save_gguf(object(), out)
    with pytest.raises(ValueError, match="not a regular file"):
        ff.save_gguf(model, tmp_path)

    def fail(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fail)
    with pytest.raises(OSError, match="disk full"):
        ff.save_gguf(model, out)
    assert out.read_bytes() == b"old" and os.listdir(tmp_path) == ["m.gguf"]
