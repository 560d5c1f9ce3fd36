"""ferroformer.plots: PNG files for loss curves, attention maps and position
tables; a one-line ImportError naming the extra when matplotlib is missing."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from ferroformer import plots
from ferroformer.models import GPT, Llama, Transformer
from ferroformer.nn.positional import sinusoidal_table

from helpers import assert_close

PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG and os.path.getsize(path) > 1000


def only_file(tmp_path, name):
    """The plot is there and no temporary file was left beside it."""
    assert sorted(os.listdir(tmp_path)) == [name]
    return is_png(tmp_path / name)


@pytest.fixture
def mpl():
    return pytest.importorskip("matplotlib")


def test_loss_curve_with_evals(mpl, tmp_path):
    hist = [(s, 3.0 * np.exp(-s / 40) + 0.05) for s in range(1, 121)]
    evals = [(40, {"acc": 0.2, "note": "text is skipped"}), (80, {"acc": 0.7}), (120, {"acc": 0.9})]
    assert plots.plot_loss(hist, tmp_path / "loss.png", evals=evals) == str(tmp_path / "loss.png")
    assert only_file(tmp_path, "loss.png")


def test_loss_curve_from_a_trainer_and_overwrite(mpl, tmp_path):
    class FakeTrainer:
        def __init__(self):
            self.history = [(1, 2.0), (2, 1.5), (3, -0.5)]  # a negative loss: linear axis
            self.evals = [(3, {"acc": 1.0})]

    path = tmp_path / "loss.png"
    path.write_bytes(b"old")
    plots.plot_loss(FakeTrainer(), path)
    assert only_file(tmp_path, "loss.png")
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # not the temp file's 0600


def test_empty_history_is_an_error(mpl, tmp_path):
    with pytest.raises(ValueError, match="history is empty"):
        plots.plot_loss([], tmp_path / "x.png")
    assert os.listdir(tmp_path) == []


def test_attention_map_one_head_and_many(mpl, tmp_path):
    w = np.tril(np.ones((5, 5))) / np.arange(1, 6)[:, None]
    plots.plot_attention(w, tmp_path / "one.png", tokens_q=list("abcde"), tokens_k=list("abcde"))
    heads = np.stack([w, w.T / w.T.sum(1, keepdims=True), np.eye(5)])
    plots.plot_attention(heads, tmp_path / "heads.png")
    assert is_png(tmp_path / "one.png") and is_png(tmp_path / "heads.png")
    assert sorted(os.listdir(tmp_path)) == ["heads.png", "one.png"]


def test_attention_map_bad_shapes_and_labels(mpl, tmp_path):
    with pytest.raises(ValueError, match=r"pick one batch row"):
        plots.plot_attention(np.ones((2, 3, 4, 4)) / 4, tmp_path / "x.png")
    with pytest.raises(ValueError, match="tokens_k has 2 labels for 4 positions"):
        plots.plot_attention(np.ones((4, 4)) / 4, tmp_path / "x.png", tokens_k=["a", "b"])
    assert os.listdir(tmp_path) == []


def test_positional_tables(mpl, tmp_path):
    gpt = GPT(10, max_seq_len=32, d_model=16, n_heads=2, n_layers=1, rng=0)
    llama = Llama(10, max_seq_len=32, d_model=16, n_heads=2, n_layers=1, rng=0)
    tr = Transformer(
        10,
        10,
        d_model=16,
        n_heads=2,
        n_encoder_layers=1,
        n_decoder_layers=1,
        d_ff=32,
        max_seq_len=40,
        rng=0,
    )
    np.testing.assert_array_equal(plots.positional_table(gpt), np.asarray(gpt.wpe.weight.data))
    assert plots.positional_table(llama).shape == (32, 4)  # cos, head_dim / 2
    assert_close(plots.positional_table(tr), sinusoidal_table(40, 16), atol=1e-7, rtol=1e-7)
    for name, src in [
        ("sin.png", sinusoidal_table(64, 32)),
        ("gpt.png", gpt),
        ("rope.png", llama),
        ("tr.png", tr),
    ]:
        plots.plot_positional_encoding(src, tmp_path / name, max_positions=30)
        assert is_png(tmp_path / name)
    with pytest.raises(ValueError, match=r"\(T, C\) table"):
        plots.plot_positional_encoding(np.zeros(5), tmp_path / "bad.png")


def test_svg_by_suffix(mpl, tmp_path):
    plots.plot_attention(np.eye(3), tmp_path / "a.svg")
    assert b"<svg" in (tmp_path / "a.svg").read_bytes()[:1000]


def test_missing_matplotlib_names_the_extra(monkeypatch, tmp_path):
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    for call in (
        lambda: plots.plot_loss([(1, 1.0)], tmp_path / "l.png"),
        lambda: plots.plot_attention(np.eye(3), tmp_path / "a.png"),
        lambda: plots.plot_positional_encoding(np.eye(3), tmp_path / "p.png"),
    ):
        with pytest.raises(ImportError) as err:
            call()
        msg = str(err.value)
        assert msg == 'plotting needs matplotlib: pip install "ferroformer[plot]"'
        assert "\n" not in msg
    assert os.listdir(tmp_path) == []
