"""Checkpoints: round trip, exact resume of a training run, atomic writes, and
clear errors for damaged, hostile or mismatched files."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from ferroformer.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from ferroformer.data import CopyTask
from ferroformer.models import GPT, Transformer
from ferroformer.train import SGD, AdamW, LRSchedule, Trainer

from helpers import assert_close
from model_helpers import tiny_transformer

TASK = CopyTask(n_symbols=6, max_len=5)


def gpt(seed=0, **kw):
    return GPT(
        TASK.vocab_size,
        max_seq_len=16,
        d_model=16,
        n_heads=2,
        n_layers=2,
        dropout=0.1,
        backend="numpy",
        rng=seed,
        **kw,
    )


def trainer(model, **kw):
    opt = AdamW(model, lr=3e-3, weight_decay=0.1)
    return Trainer(
        model,
        opt,
        TASK.lm_batch_fn(8),
        schedule=LRSchedule(3e-3, 3, 12),
        grad_clip=1.0,
        accum_steps=2,
        seed=7,
        progress=False,
        **kw,
    )


def test_resume_gives_exactly_the_uninterrupted_losses(tmp_path):
    full = trainer(gpt())
    full.fit(12)
    path = tmp_path / "ckpt.safetensors"
    first = trainer(gpt(), checkpoint_path=path, checkpoint_every=5)
    first.fit(7)  # the checkpoint holds step 5
    resumed = trainer(gpt(seed=99))  # different initial weights and dropout seeds
    resumed.resume(path)
    assert resumed.step == 5
    resumed.fit(12)
    assert [l for _, l in resumed.history] == [l for _, l in full.history[5:]]
    for p, q in zip(full.model.parameters(), resumed.model.parameters()):
        assert_close(q.data, p.data, rtol=0, atol=0)


def test_round_trip_rebuilds_model_and_optimizer(tmp_path, rng):
    model = tiny_transformer(9, 9, d_ff=16)
    opt = SGD(model, lr=0.1, momentum=0.9)
    tr = Trainer(model, opt, CopyTask(5, 1, 4).seq2seq_batch_fn(4), seed=0, progress=False)
    tr.fit(2)
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, opt, step=2, extra={"note": "hi"})
    c = load_checkpoint(path, backend="numpy")
    assert isinstance(c.model, Transformer) and c.step == 2 and c.extra == {"note": "hi"}
    assert c.model.config == model.config
    src, tgt = rng.integers(0, 9, (2, 4)), rng.integers(0, 9, (2, 3))
    model.eval(), c.model.eval()
    assert_close(c.model(src, tgt), model(src, tgt), rtol=0, atol=0)
    opt2 = SGD(c.model, lr=1.0)
    load_checkpoint(path, c.model, opt2)
    assert opt2.lr == 0.1 and opt2.momentum == 0.9 and opt2.step_count == 2
    for k, v in opt.state_tensors().items():
        assert_close(opt2.state_tensors()[k], v, rtol=0, atol=0)


def test_atomic_write_leaves_no_temp_files(tmp_path):
    path = tmp_path / "a.safetensors"
    save_checkpoint(path, gpt())
    save_checkpoint(path, gpt(seed=1))  # overwrite in place
    assert os.listdir(tmp_path) == ["a.safetensors"]
    tensors, meta = read_checkpoint(path)
    assert json.loads(meta["model_config"])["d_model"] == 16
    assert_close(tensors["model/wte.weight"], gpt(seed=1).wte.weight.data, rtol=0, atol=0)


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="POSIX permissions")
def test_atomic_write_gives_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "p.safetensors", gpt())
    finally:
        os.umask(old)
    assert (tmp_path / "p.safetensors").stat().st_mode & 0o777 == 0o644


# -- damaged and hostile files ------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "c.safetensors"
    model = gpt()
    save_checkpoint(path, model, AdamW(model))
    return path, path.read_bytes()


def _rewrite(path, header: dict, body: bytes):
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + body)


def _split(data):
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def test_truncated_file(saved):
    path, data = saved
    for cut in (0, 5, 100, len(data) - 10):
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="not a valid ferroformer checkpoint"):
            load_checkpoint(path, backend="numpy")


def test_huge_header_length(saved):
    path, data = saved
    path.write_bytes(struct.pack("<Q", 2**62) + data[8:])
    with pytest.raises(ValueError, match="header length"):
        load_checkpoint(path, backend="numpy")


def test_garbage_header(saved):
    path, data = saved
    path.write_bytes(struct.pack("<Q", 10) + b"not json!!" + data[8:])
    with pytest.raises(ValueError, match="not JSON"):
        load_checkpoint(path, backend="numpy")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(ValueError, match="header length"):
        load_checkpoint(path, backend="numpy")


HEADER_EDITS = {  # name: (edit(header, body) in place, what the error says)
    "wrong format, pickle-free": (
        lambda h, body: h["__metadata__"].update(format="pickle"),
        "format",
    ),
    "offsets outside the data": (
        lambda h, body: h["model/wte.weight"].update(data_offsets=[0, len(body) + 400]),
        "offsets",
    ),
    "shape that does not fit its bytes": (
        lambda h, body: h["model/wte.weight"].update(shape=[10**9, 10**9]),
        "needs",
    ),
}


@pytest.mark.parametrize("case", sorted(HEADER_EDITS))
def test_damaged_header(saved, case):
    change, message = HEADER_EDITS[case]
    path, data = saved
    header, body = _split(data)
    change(header, body)
    _rewrite(path, header, body)
    with pytest.raises(ValueError, match=message):
        load_checkpoint(path, backend="numpy")


def test_wrong_shapes_for_the_model(saved, tmp_path):
    path, _ = saved
    other = GPT(
        TASK.vocab_size, max_seq_len=16, d_model=32, n_heads=2, n_layers=2, backend="numpy", rng=0
    )
    with pytest.raises(ValueError, match="written for GPT"):
        load_checkpoint(path, model=other)
    header, body = _split(path.read_bytes())
    cfg = json.loads(header["__metadata__"]["model_config"])
    cfg["d_model"] = 32  # config and weights disagree
    header["__metadata__"]["model_config"] = json.dumps(cfg)
    _rewrite(path, header, body)
    with pytest.raises(ValueError, match="shape"):
        load_checkpoint(path, backend="numpy")


def test_hostile_config_and_metadata(saved):
    path, data = saved
    for key, value in [
        ("model_config", json.dumps({"vocab_size": 10**12})),
        ("model_config", json.dumps({"vocab_size": 9, "__import__": "os"})),
        ("model_class", "os.system"),
        ("step", "-3"),
        ("rng", json.dumps({"model": {"drop": {"bit_generator": "Evil"}}})),
        ("optimizer", "{broken"),
    ]:
        header, body = _split(data)
        header["__metadata__"][key] = value
        _rewrite(path, header, body)
        with pytest.raises(ValueError):
            model = gpt()
            load_checkpoint(
                path,
                model if key == "optimizer" else None,
                AdamW(model) if key == "optimizer" else None,
                backend="numpy",
            )


def test_non_finite_weights(saved):
    path, data = saved
    header, body = _split(data)
    a, _ = header["model/wte.weight"]["data_offsets"]
    body = body[:a] + np.float32(np.nan).tobytes() + body[a + 4 :]
    _rewrite(path, header, body)
    with pytest.raises(ValueError, match="finite"):
        load_checkpoint(path, backend="numpy")


def test_missing_optimizer_state(tmp_path):
    path = tmp_path / "m.safetensors"
    model = gpt()
    save_checkpoint(path, model)
    with pytest.raises(ValueError, match="no optimizer"):
        load_checkpoint(path, model, AdamW(model))
    with pytest.raises(ValueError, match="optimizer state is for"):
        save_checkpoint(path, model, AdamW(model))
        load_checkpoint(path, model, SGD(model, lr=0.1))
