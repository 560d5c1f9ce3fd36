"""``python -m ferroformer train`` and ``generate`` as subprocesses: training
with checkpoints, exact resume, generation from a checkpoint, and one-line
errors (never a traceback) for bad arguments and bad checkpoints."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ferroformer import cli
from ferroformer.checkpoint import load_checkpoint, save_checkpoint
from ferroformer.models import GPT

PNG = b"\x89PNG\r\n\x1a\n"
TINY = ["--layers", "1", "--d-model", "32", "--heads", "2", "--batch-size", "16", "--no-progress"]


def run(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "ferroformer", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(*args):
    out = run(*args)
    assert out.returncode == 0, out.stderr
    return out


def fails(*args, code=1):
    """The command fails with exactly one line on stderr, starting 'error:'."""
    out = run(*args)
    assert out.returncode == code, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    return lines[0]


@pytest.fixture(scope="module")
def copy_run(tmp_path_factory):
    """A Transformer trained on copy (module-wide; the fixture every generate test shares)."""
    d = tmp_path_factory.mktemp("copy")
    ok(
        "train",
        "--task",
        "copy",
        "--model",
        "transformer",
        "--length",
        "5",
        "--steps",
        "150",
        "--eval-examples",
        "50",
        "--checkpoint-dir",
        d,
        "--layers",
        "1",
        "--d-model",
        "32",
        "--heads",
        "2",
        "--batch-size",
        "32",
        "--no-progress",
    )
    return d


@pytest.fixture(scope="module")
def bytes_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("bytes")
    ok("train", "--task", "bytes", "--seq-len", "32", "--steps", "20", "--checkpoint-dir", d, *TINY)
    return d


# -- help and argument errors ----------------------------------------------------------------
def test_help_lists_the_new_commands():
    out = ok("--help")
    assert "train" in out.stdout and "generate" in out.stdout
    t = ok("train", "--help").stdout
    for flag in (
        "--task",
        "--model",
        "--layers",
        "--d-model",
        "--heads",
        "--backend",
        "--steps",
        "--batch-size",
        "--lr",
        "--seed",
        "--checkpoint-dir",
        "--resume",
        "--plot",
    ):
        assert flag in t
    g = ok("generate", "--help").stdout
    for flag in (
        "--checkpoint",
        "--prompt",
        "--max-new-tokens",
        "--temperature",
        "--top-k",
        "--top-p",
        "--seed",
    ):
        assert flag in g


@pytest.mark.parametrize(
    "args, code, says",
    [
        (["train", "--steps", "0"], 2, "must be a positive integer"),
        (["train", "--task", "poetry"], 2, "invalid choice"),
        (["train", "--task", "bytes", "--model", "transformer"], 1, "needs a seq2seq task"),
        (["train", "--d-model", "30", "--heads", "4"], 1, "not divisible"),
        (["train", "--resume"], 1, "--resume needs --checkpoint-dir"),
        (["train", "--plot", "/nonexistent/ff/loss.png"], 1, "does not exist"),
        (["generate", "--prompt", "1"], 2, "--checkpoint"),
        (
            ["generate", "--checkpoint", "/nonexistent/ff.safetensors", "--prompt", "1"],
            1,
            "no such checkpoint",
        ),
    ],
)
def test_bad_arguments_are_one_line(args, code, says):
    if code == 2:  # argparse: usage line(s) then the error
        out = run(*args)
        assert out.returncode == 2 and says in out.stderr and "Traceback" not in out.stderr
    else:
        assert says in fails(*args)


def test_plot_without_matplotlib_says_how_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code = cli.main(["train", "--plot", str(tmp_path / "l.png"), "--steps", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip() == 'error: plotting needs matplotlib: pip install "ferroformer[plot]"'
    assert os.listdir(tmp_path) == []  # failed before training


# -- train -----------------------------------------------------------------------------------
def test_train_reports_checkpoints_and_plots(tmp_path):
    d = tmp_path / "run"
    args = [
        *"train --task addition --digits 1 --steps 60 --eval-examples 40".split(),
        *("--checkpoint-dir", d, "--checkpoint-every", "20"),
        *TINY,
    ]
    try:
        import matplotlib  # noqa: F401

        args += ["--plot", tmp_path / "loss.png"]
        plotting = True
    except ImportError:
        plotting = False
    out = ok(*args)
    assert "tokens/s" in out.stdout and "final loss" in out.stdout
    assert "exact match on 40 held-out examples" in out.stdout
    assert sorted(os.listdir(d)) == [f"step-{s:08d}.safetensors" for s in (20, 40, 60)]
    ck = load_checkpoint(d / "step-00000060.safetensors")
    assert ck.step == 60 and type(ck.model).__name__ == "GPT"
    assert ck.extra["run"]["task"] == "addition" and ck.extra["run"]["digits"] == 1
    assert [s for s, _ in ck.extra["history"]] == list(range(1, 61))
    if plotting:
        assert (tmp_path / "loss.png").read_bytes()[:8] == PNG


def test_old_checkpoints_are_pruned(tmp_path):
    ok(
        "train",
        "--task",
        "reverse",
        "--length",
        "3",
        "--steps",
        "5",
        "--checkpoint-every",
        "1",
        "--eval-examples",
        "0",
        "--checkpoint-dir",
        tmp_path,
        *TINY,
    )
    assert sorted(os.listdir(tmp_path)) == [f"step-{s:08d}.safetensors" for s in (3, 4, 5)]


@pytest.mark.parametrize("model", ["gpt", "llama"])
def test_resume_continues_to_exactly_the_same_losses(tmp_path, model):
    """A run interrupted after step 20 (its step-20 checkpoint alone) and resumed ends
    where the uninterrupted run ends: same losses at every step, same weights."""
    common = ["--task", "reverse", "--length", "4", "--model", model, "--eval-examples", "0", *TINY]
    full, cut = tmp_path / "full", tmp_path / "cut"
    whole = ok(
        "train", "--steps", "30", "--checkpoint-every", "10", "--checkpoint-dir", full, *common
    )
    cut.mkdir()
    shutil.copy(full / "step-00000020.safetensors", cut)
    resumed = ok(
        "train", "--resume", "--checkpoint-dir", cut, "--no-progress", "--eval-examples", "0"
    )
    assert "steps 21..30" in resumed.stdout and "trained 10 steps" in resumed.stdout
    final = [line for line in whole.stdout.splitlines() if line.startswith("final loss")]
    assert final and final == [
        ln for ln in resumed.stdout.splitlines() if ln.startswith("final loss")
    ]
    a = load_checkpoint(full / "step-00000030.safetensors")
    b = load_checkpoint(cut / "step-00000030.safetensors")
    assert b.step == 30 and a.extra["history"] == b.extra["history"]
    assert len(b.extra["history"]) == 30
    pa, pb = dict(a.model.named_parameters()), dict(b.model.named_parameters())
    for name in pa:
        np.testing.assert_array_equal(
            np.asarray(pa[name].data), np.asarray(pb[name].data), err_msg=name
        )
    # --steps extends a finished run; the losses of the first 30 steps stay as they were
    more = ok(
        "train",
        "--resume",
        "--checkpoint-dir",
        cut,
        "--steps",
        "32",
        "--no-progress",
        "--eval-examples",
        "0",
    )
    assert "steps 31..32" in more.stdout
    c = load_checkpoint(cut / "step-00000032.safetensors")
    assert c.extra["history"][:30] == a.extra["history"]


def test_resume_guards(tmp_path):
    ok(
        "train",
        "--task",
        "copy",
        "--length",
        "3",
        "--steps",
        "3",
        "--eval-examples",
        "0",
        "--checkpoint-dir",
        tmp_path,
        *TINY,
    )
    assert "already holds checkpoints (up to step 3)" in fails(
        "train", "--steps", "3", "--checkpoint-dir", tmp_path
    )
    assert "--layers 2 differs from the run" in fails(
        "train", "--resume", "--checkpoint-dir", tmp_path, "--layers", "2"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no checkpoint" in fails("train", "--resume", "--checkpoint-dir", empty)
    latest = tmp_path / "step-00000003.safetensors"
    latest.write_bytes(latest.read_bytes()[:500])  # damaged
    assert "not a valid ferroformer checkpoint" in fails(
        "train", "--resume", "--checkpoint-dir", tmp_path
    )


# -- generate -----------------------------------------------------------------------------------
def test_generate_copies_greedily_and_deterministically(copy_run):
    a = ok("generate", "--checkpoint", copy_run, "--prompt", "31415")
    b = ok("generate", "--checkpoint", copy_run / "step-00000150.safetensors", "--prompt", "31415")
    assert a.stdout == b.stdout
    assert a.stdout.strip() == "31415"  # a trained copier copies


def test_generate_addition_prints_the_sum(tmp_path):
    ok(
        *"train --task addition --digits 1 --steps 10 --eval-examples 0".split(),
        *("--checkpoint-dir", tmp_path),
        *TINY,
    )
    out = ok("generate", "--checkpoint", tmp_path, "--prompt", "3+4")
    assert out.stdout.startswith("3 + 4 = ")
    assert "at most 1 digits" in fails("generate", "--checkpoint", tmp_path, "--prompt", "12+4")


def test_sampling_is_seeded(bytes_run):
    args = [
        "generate",
        "--checkpoint",
        bytes_run,
        "--prompt",
        "def ",
        "--temperature",
        "1.5",
        "--max-new-tokens",
        "16",
    ]
    one = ok(*args, "--seed", "3").stdout
    assert one == ok(*args, "--seed", "3").stdout
    assert one.startswith("def ")
    others = {ok(*args, "--seed", s).stdout for s in (4, 5)}
    assert others != {one}  # the seed matters
    greedy = ["generate", "--checkpoint", bytes_run, "--prompt", "def ", "--max-new-tokens", "16"]
    assert ok(*greedy, "--seed", "7").stdout == ok(*greedy, "--seed", "8").stdout


def test_sampling_on_the_transformer(copy_run):
    args = [
        "generate",
        "--checkpoint",
        copy_run,
        "--prompt",
        "2718",
        "--temperature",
        "1.0",
        "--top-k",
        "3",
        "--top-p",
        "0.9",
        "--seed",
        "1",
    ]
    assert ok(*args).stdout == ok(*args).stdout


def test_generate_errors(copy_run, bytes_run, tmp_path):
    assert "symbols 0123456789" in fails("generate", "--checkpoint", copy_run, "--prompt", "12a")
    assert "1 to 5 of the symbols" in fails(
        "generate", "--checkpoint", copy_run, "--prompt", "123456"
    )
    assert "--temperature must be >= 0" in fails(
        "generate", "--checkpoint", copy_run, "--prompt", "12", "--temperature", "-1"
    )
    assert "context of 32 tokens" in fails(
        "generate", "--checkpoint", bytes_run, "--prompt", "x", "--max-new-tokens", "40"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no checkpoint" in fails("generate", "--checkpoint", empty, "--prompt", "1")
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes((copy_run / "step-00000150.safetensors").read_bytes()[:-100])
    assert "not a valid ferroformer checkpoint" in fails(
        "generate", "--checkpoint", damaged, "--prompt", "1"
    )
    foreign = tmp_path / "foreign.safetensors"
    save_checkpoint(foreign, GPT(16, max_seq_len=8, d_model=8, n_heads=2, n_layers=1, rng=0))
    assert "holds no valid `python -m ferroformer train` settings" in fails(
        "generate", "--checkpoint", foreign, "--prompt", "1"
    )


# -- inspect -------------------------------------------------------------------------------------
def test_inspect_prints_entropies_and_plots(copy_run, tmp_path):
    args = ["inspect", "--checkpoint", copy_run, "--prompt", "31415"]
    try:
        import matplotlib  # noqa: F401

        args += ["--kind", "cross", "--plot", tmp_path / "cross.png"]
    except ImportError:
        pass
    out = ok(*args).stdout
    assert "encoder [3 1 4 1 5]" in out
    for name in ("encoder self layer 0", "decoder self layer 0", "decoder cross layer 0"):
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(name))
        ents = [float(e) for e in re.findall(r"h\d+ (\d+\.\d+)", line)]
        assert len(ents) == 2 and all(0 <= e <= np.log(6) + 1e-3 for e in ents), line
    if "--plot" in args:
        assert (tmp_path / "cross.png").read_bytes()[:8] == PNG
        assert "layer 5 is out of range" in fails(
            *args[:5], "--layer", "5", "--plot", tmp_path / "x.png"
        )
