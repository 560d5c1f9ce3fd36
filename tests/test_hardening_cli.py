"""The command line under careless input: a bad argument is argparse's usage
error (exit 2), a failure while running is one ``error:`` line (exit 1), never a
traceback unless ``--debug`` asks for one; paths that could block (a FIFO) or a
run that cannot fit in memory are refused before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ferroformer import cli
from ferroformer.checkpoint import load_checkpoint, save_checkpoint
from ferroformer.cli import embed as cli_embed
from ferroformer.cli import runs  # noqa: F401  (cli.runs)

TINY = ["--layers", "1", "--d-model", "16", "--heads", "2", "--batch-size", "8", "--no-progress"]


def main(capsys, *args):
    """(exit code, stdout, stderr) of cli.main in this process."""
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error(capsys, *args) -> str:
    code, _, err = main(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# -- usage errors: exit 2, argparse's message naming the flag --------------------------------
@pytest.mark.parametrize(
    "args, flag",
    [
        (["train", "--steps", "0"], "--steps"),
        (["train", "--steps", "ten"], "--steps"),
        (["train", "--lr", "nan"], "--lr"),
        (["train", "--lr", "-1e-3"], "--lr"),
        (["train", "--lr", "inf"], "--lr"),
        (["train", "--digits", "10"], "--digits"),
        (["train", "--seed", "-1"], "--seed"),
        (["train", "--eval-examples", "-5"], "--eval-examples"),
        (["train", "--task", "poetry"], "--task"),
        (["demo", "--steps", "0"], "--steps"),
        (["demo", "--digits", "0"], "--digits"),
        (["bench", "--threads", "100000"], "--threads"),
        (["bench", "--repeat", "0"], "--repeat"),
        (["generate", "--checkpoint", "x", "--prompt", "1", "--seed", "-2"], "--seed"),
        (["generate", "--checkpoint", "x", "--prompt", "1", "--top-k", "0"], "--top-k"),
        (["no-such-command"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2(capsys, args, flag):
    code, _, err = main(capsys, *args)
    assert code == 2 and flag in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("python -m ferroformer")


# -- failures while running: one error: line, exit 1 ------------------------------------------
def test_fifo_checkpoint_is_refused_without_blocking(capsys, tmp_path):
    fifo = tmp_path / "ckpt.safetensors"
    os.mkfifo(fifo)
    # opening a FIFO for reading blocks until a writer comes: the check must not open it
    line = one_error(capsys, "generate", "--checkpoint", fifo, "--prompt", "1")
    assert "not a regular file" in line


def test_a_fifo_in_a_checkpoint_dir_does_not_count(capsys, tmp_path):
    os.mkfifo(tmp_path / "step-00000005.safetensors")
    line = one_error(capsys, "generate", "--checkpoint", tmp_path, "--prompt", "1")
    assert "no checkpoint" in line


def test_device_is_refused(capsys):
    assert "not a regular file" in one_error(
        capsys, "generate", "--checkpoint", "/dev/zero", "--prompt", "1"
    )


@pytest.mark.parametrize(
    "args, says",
    [
        (["generate", "--checkpoint", "{tmp}", "--prompt", "1"], "no checkpoint"),
        (
            ["generate", "--checkpoint", "{tmp}/none.safetensors", "--prompt", "1"],
            "no such checkpoint",
        ),
        (
            ["generate", "--checkpoint", "{tmp}", "--prompt", "1", "--temperature", "nan"],
            "--temperature",
        ),
        (
            ["generate", "--checkpoint", "{tmp}", "--prompt", "1", "--temperature", "-1"],
            "--temperature",
        ),
        (["train", "--checkpoint-dir", "{tmp}/file", "--steps", "1", *TINY], "is a file"),
        (["train", "--plot", "{tmp}", "--steps", "1", *TINY], "is a directory"),
        (
            ["inspect", "--checkpoint", "{tmp}", "--prompt", "1", "--plot", "{tmp}/no/such/a.png"],
            "does not exist",
        ),
    ],
)
def test_runtime_errors_are_one_line(capsys, tmp_path, args, says):
    (tmp_path / "file").write_text("x")
    line = one_error(capsys, *[a.format(tmp=tmp_path) for a in args])
    assert says in line


def test_a_run_that_cannot_fit_in_memory_is_refused_before_allocating(capsys):
    line = one_error(
        capsys,
        "train",
        "--d-model",
        "65536",
        "--heads",
        "1",
        "--layers",
        "512",
        "--steps",
        "1",
        "--no-progress",
    )
    assert line.startswith("error: out of memory:") and "GiB" in line and "--d-model" in line


def test_an_unwritable_checkpoint_dir_fails_before_training(capsys, tmp_path):
    # /proc takes no new entries, even from root
    line = one_error(
        capsys, "train", "--checkpoint-dir", "/proc/ferroformer-ckpt", "--steps", "1", *TINY
    )
    assert "/proc/ferroformer-ckpt" in line
    (tmp_path / "file").write_text("x")
    line = one_error(
        capsys, "train", "--checkpoint-dir", tmp_path / "file" / "sub", "--steps", "1", *TINY
    )
    assert "Not a directory" in line


def _train(capsys, d, *extra, steps=2):
    """``train`` of a tiny GPT on copy into checkpoint dir ``d`` -> (code, stdout, stderr)."""
    return main(
        capsys,
        *"train --task copy --model gpt --length 3 --eval-examples 0".split(),
        *("--steps", str(steps), "--checkpoint-dir", d),
        *TINY,
        *extra,
    )


def test_a_checkpoint_from_something_else_is_named(capsys, tmp_path):
    d = tmp_path / "run"
    assert _train(capsys, d)[0] == 0
    path = d / "step-00000002.safetensors"
    ck = load_checkpoint(path, backend="numpy")
    # settings that do not describe the model stored with them
    run = dict(ck.extra["run"], d_model=64)
    save_checkpoint(path, ck.model, step=2, extra=dict(ck.extra, run=run))
    line = one_error(capsys, "generate", "--checkpoint", path, "--prompt", "12")
    assert str(path) in line and "does not match" in line
    # settings of the wrong types
    run = dict(ck.extra["run"], layers="1")
    save_checkpoint(path, ck.model, step=2, extra=dict(ck.extra, run=run))
    assert "invalid" in one_error(capsys, "generate", "--checkpoint", path, "--prompt", "12")
    # a broken schedule stops --resume
    save_checkpoint(
        path,
        ck.model,
        ck.optimizer if hasattr(ck, "optimizer") else None,
        step=2,
        extra=dict(ck.extra, schedule={"base_lr": "x"}),
    )
    line = one_error(
        capsys, "train", "--checkpoint-dir", d, "--resume", "--steps", "3", "--no-progress"
    )
    assert "schedule" in line or "optimizer" in line


def test_resume_refuses_fewer_steps_than_reached(capsys, tmp_path):
    d = tmp_path / "run"
    assert _train(capsys, d)[0] == 0
    line = one_error(
        capsys, "train", "--checkpoint-dir", d, "--resume", "--steps", "1", "--no-progress"
    )
    assert "below step 2" in line


def test_diverging_training_stops_with_the_step_and_keeps_the_last_good_checkpoint(
    capsys, tmp_path
):
    d = tmp_path / "run"
    code, _, err = _train(capsys, d, "--checkpoint-every", "1", "--lr", "1e38", steps=50)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert "training stopped at step" in lines[0] and "the last good checkpoint is" in lines[0]
    step = int(lines[0].split("training stopped at step ")[1].split(":")[0])
    kept = cli.runs.checkpoints(d)
    assert kept and kept[-1][0] == step - 1
    ck = load_checkpoint(kept[-1][1], backend="numpy")
    assert all(np.isfinite(p.data).all() for p in ck.model.parameters())


# -- --debug and unexpected errors --------------------------------------------------------------
def test_debug_prints_the_traceback(capsys, tmp_path):
    code, _, err = main(
        capsys, "generate", "--checkpoint", tmp_path / "none", "--prompt", "1", "--debug"
    )
    assert code == 1 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")
    code, _, err = main(
        capsys, "--debug", "generate", "--checkpoint", tmp_path / "none", "--prompt", "1"
    )
    assert code == 1 and "Traceback" in err


def test_a_bug_is_reported_as_unexpected(capsys, monkeypatch):
    def broken(args):
        raise KeyError("k")

    monkeypatch.setattr(cli_embed, "run", broken)
    line = one_error(capsys, "embed", "a", "b")
    assert "unexpected KeyError" in line and "--debug" in line


def test_ctrl_c_exits_130(capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_embed, "run", interrupted)
    code, _, err = main(capsys, "embed", "a")
    assert code == 130 and err.strip() == "interrupted"


@pytest.mark.parametrize(
    "exc, want",
    [
        (
            FileNotFoundError(2, "No such file or directory", "/x"),
            "error: /x: No such file or directory",
        ),
        (ValueError("two\n  lines"), "error: two lines"),
        (MemoryError(), "error: out of memory"),
        (
            RecursionError("deep"),
            "error: unexpected RecursionError: deep (--debug shows the traceback)",
        ),
        (TypeError(""), "error: unexpected TypeError: TypeError (--debug shows the traceback)"),
    ],
)
def test_error_line(exc, want):
    assert cli.error_line(exc) == want


def test_the_entry_point_answers_in_one_line():
    """The installed module as a user runs it: exit code and stderr of a real process."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ferroformer",
            "generate",
            "--checkpoint",
            "/dev/null",
            "--prompt",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("error: /dev/null: not a regular file")
    json.dumps(out.stderr)  # printable text


def test_version(capsys):
    from ferroformer import __version__

    code, out, _ = main(capsys, "--version")
    assert code == 0 and out.strip() == f"ferroformer {__version__}"


def test_every_command_has_a_module():
    """Each command is its own module with add_parser and run, importable on its own."""
    import importlib

    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    assert list(sub.choices) == list(cli.COMMANDS)
    for name in cli.COMMANDS:
        module = importlib.import_module(f"ferroformer.cli.{name}")
        assert callable(module.add_parser) and callable(module.run)


def test_an_output_path_that_is_not_a_file_is_refused_and_kept(capsys, tmp_path):
    """--plot onto a FIFO (or /dev/null) must not replace it with a regular file."""
    import stat

    fifo = tmp_path / "out.png"
    os.mkfifo(fifo)
    line = one_error(capsys, "train", "--plot", fifo, "--steps", "1", *TINY)
    assert "not a regular file" in line and stat.S_ISFIFO(os.stat(fifo).st_mode)
