"""The command line on GGUF files written here: ``generate --gguf``, ``chat --gguf``
and ``quantize IN OUT --type``, each printing what the library computes, and one
``error:`` line (exit code 1) for a missing, damaged, unsupported or unusable file."""

from __future__ import annotations

import os

import numpy as np
import pytest
from test_quant_gguf import llama_file

import ferroformer as ff
from ferroformer.checkpoint import save_checkpoint
from ferroformer.cli import main
from ferroformer.models import GPT
from ferroformer.quant import QuantizedEmbedding, QuantizedLinear

from helpers import assert_close

gguf = pytest.importorskip("gguf")
pytest.importorskip("jinja2")

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(file without a chat template, file with one) of a 2-layer Llama of mixed types."""
    tmp = tmp_path_factory.mktemp("gguf")
    plain, _ = llama_file(tmp)
    model, tok = ff.load_gguf(plain, backend="numpy", activations="float")
    tok.chat_template = CHATML
    chat = tmp / "chat.gguf"
    ff.save_gguf(model, chat, tokenizer=tok)
    return plain, chat


def one_error_line(capsys, names):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert names in lines[0]
    return lines[0]


def test_generate_prints_the_greedy_continuation(tiny, capsys):
    path, _ = tiny
    assert (
        main(
            [
                "generate",
                "--gguf",
                str(path),
                "--prompt",
                "tt t",
                "--max-new-tokens",
                "6",
                "--backend",
                "numpy",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    model, tok = ff.load_gguf(path, backend="numpy", activations="float")
    new = model.generate(np.array([tok.encode("tt t")]), 6, eos_id=tok.eos_id)[0]
    want = tok.decode([t for t in new.tolist() if t != tok.eos_id])
    assert out == want + "\n"


def test_chat_renders_the_files_template(tiny, capsys):
    _, path = tiny
    assert (
        main(["chat", "--gguf", str(path), "hello", "--max-new-tokens", "5", "--backend", "numpy"])
        == 0
    )
    out = capsys.readouterr().out
    from ferroformer.pretrained.smollm import chat

    model, tok = ff.load_gguf(path, backend="numpy", activations="float")
    assert out == chat(model, tok, "hello", max_new_tokens=5) + "\n"


def test_chat_without_a_template_is_one_error_line(tiny, capsys):
    plain, _ = tiny
    assert main(["chat", "--gguf", str(plain), "hello", "--backend", "numpy"]) == 1
    one_error_line(capsys, f"{plain}: the file has no chat template")


@pytest.mark.parametrize("qtype", ["q8_0", "Q4_K"])
def test_quantize_a_gguf_file(tiny, tmp_path, capsys, qtype):
    _, src = tiny
    out = tmp_path / "q.gguf"
    assert main(["quantize", str(src), str(out), "--type", qtype]) == 0
    assert capsys.readouterr().out == f"wrote {out} ({qtype.upper()})\n"
    model, tok = ff.load_gguf(out, backend="numpy", activations="float")
    orig, _ = ff.load_gguf(src, backend="numpy", activations="float")
    for blk in model.blocks:
        for lin in (blk.attn.qkv, blk.attn.proj, blk.ff.fc1, blk.ff.fc2):
            assert isinstance(lin, QuantizedLinear) and lin.qtype == qtype.upper()
    # the embedding keeps its blocks; the untied head is requantized
    assert isinstance(model.tok_emb, QuantizedEmbedding)
    np.testing.assert_array_equal(model.tok_emb.table.data, orig.tok_emb.table.data)
    assert model.lm_head.qtype == qtype.upper()
    assert tok.chat_template == CHATML
    ids = np.array([[5, 9, 256, 30]])
    scale = np.abs(orig(ids)).max()
    assert_close(
        model(ids) / scale,
        orig(ids) / scale,
        rtol=0,
        atol=0.05 if qtype == "q8_0" else 0.3,
        name=qtype,
    )


def test_quantize_a_checkpoint(tmp_path, capsys):
    model = GPT(
        vocab_size=40, max_seq_len=16, d_model=64, n_heads=2, n_layers=1, backend="numpy", rng=0
    )
    ckpt = tmp_path / "model.safetensors"
    save_checkpoint(ckpt, model)
    out = tmp_path / "model.gguf"
    with pytest.warns(UserWarning, match="tokenizer model 'none'"):
        assert main(["quantize", str(ckpt), str(out), "--type", "q8_0"]) == 0
        back, tok = ff.load_gguf(out, backend="numpy", activations="float")
    assert tok is None and back.blocks[0].attn.qkv.qtype == "Q8_0"
    ids = np.array([[1, 2, 3]])
    want = ff.quantize(model.eval(), "q8_0", activations="float")(ids)
    assert_close(back(ids), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("command", ["generate", "chat", "quantize"])
def test_bad_files_are_one_error_line(tmp_path, capsys, command):
    truncated = tmp_path / "cut.gguf"
    whole = gguf_bytes(tmp_path)
    truncated.write_bytes(whole[: len(whole) // 2])
    text = tmp_path / "notes.gguf"
    text.write_text("not a model at all\n")
    other = tmp_path / "other-arch.gguf"
    w = gguf.GGUFWriter(os.fspath(other), "mamba")
    w.add_tensor("x.weight", np.zeros((2, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    cases = [
        (tmp_path / "nowhere.gguf", "no such"),
        (truncated, "not a valid GGUF"),
        (other, "architecture 'mamba' is not supported"),
    ]
    if command != "quantize":
        cases.append((text, "not a valid GGUF"))
    for path, match in cases:
        argv = {
            "generate": ["generate", "--gguf", str(path), "--prompt", "x"],
            "chat": ["chat", "--gguf", str(path), "hi"],
            "quantize": ["quantize", str(path), str(tmp_path / "o.gguf")],
        }[command]
        assert main(argv) == 1, path
        line = one_error_line(capsys, str(path))
        assert match in line, line
    assert not (tmp_path / "o.gguf").exists()


def test_an_unknown_type_is_a_usage_error(tiny, tmp_path, capsys):
    plain, _ = tiny
    with pytest.raises(SystemExit) as info:
        main(["quantize", str(plain), str(tmp_path / "o.gguf"), "--type", "iq2_xs"])
    assert info.value.code == 2
    assert "invalid choice: 'iq2_xs'" in capsys.readouterr().err


def gguf_bytes(tmp_path) -> bytes:
    """The bytes of a whole, valid tiny Llama file."""
    (tmp_path / "src").mkdir()
    path, _ = llama_file(tmp_path / "src")
    return path.read_bytes()
