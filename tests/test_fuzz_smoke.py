"""The Python fuzz targets (fuzz/python) still run: each over a couple of hundred
inputs in a subprocess, in keep-going mode (findings are printed as CRASH lines
and listed in fuzz/FINDINGS.md; FUZZ_STRICT=1 makes them fail this test too).
A target that no longer imports, sets up, or survives its inputs fails here.
Skipped without atheris."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUZZ = os.path.join(ROOT, "fuzz")
RUNS = 200

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None, reason="atheris is not installed"
)


@pytest.mark.parametrize("target", ["ops", "files", "cli"])
def test_fuzz_target_runs(target, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    dirs = [str(corpus)]
    seeds = os.path.join(FUZZ, "corpus", f"py-{target}")
    if os.path.isdir(seeds):
        dirs.append(seeds)
    env = {
        **os.environ,
        "FUZZ_KEEP_GOING": "1",
        "FUZZ_ARTIFACTS": str(tmp_path / "artifacts"),
        "FUZZ_MEMORY_MB": "2048",
    }
    cmd = [
        sys.executable,
        os.path.join(FUZZ, "python", f"fuzz_{target}.py"),
        f"-runs={RUNS}",
        "-seed=1",
        "-timeout=0",
        "-rss_limit_mb=2048",
        f"-artifact_prefix={tmp_path}{os.sep}",
        *dirs,
    ]
    p = subprocess.run(
        cmd,
        env=env,
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        errors="replace",
        timeout=300,
    )
    out = p.stdout + p.stderr
    tail = out[-3000:]
    assert p.returncode == 0, f"fuzz_{target}.py exited {p.returncode}:\n{tail}"
    assert re.search(rf"^Done {RUNS} runs", out, re.M), (
        f"fuzz_{target}.py did not run {RUNS} inputs:\n{tail}"
    )
    crashes = [line for line in out.splitlines() if line.startswith("CRASH ")]
    for line in crashes:
        print(line)
    if os.environ.get("FUZZ_STRICT") == "1":
        assert not crashes, "\n".join(crashes)


@pytest.mark.parametrize("target", ["ops"])
def test_fixed_findings_stay_fixed(target):
    """Every saved input of a fixed finding (fuzz/regressions/py-<target>) replays ``ok``:
    the target's own verdict (no exception outside the allowed ones, numpy == rust, no
    hang or second-long call on a tiny input)."""
    folder = os.path.join(FUZZ, "regressions", f"py-{target}")
    inputs = sorted(os.path.join(folder, f) for f in os.listdir(folder))
    cmd = [sys.executable, os.path.join(FUZZ, "python", "replay.py"), f"fuzz_{target}", *inputs]
    p = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=600)
    verdicts = [line for line in p.stdout.splitlines() if line.startswith(folder)]
    assert len(verdicts) == len(inputs), p.stdout[-3000:] + p.stderr[-3000:]
    bad = [line for line in verdicts if not line.endswith("\tok")]
    assert not bad, "\n".join(bad)
