"""Replays crash inputs of a cargo-fuzz target and groups them by cause.

    python3 fuzz/rust/triage.py matmul fuzz/work/artifacts/rust-matmul/crash-*
    python3 fuzz/rust/triage.py --brief matmul FILE...   # only the number of distinct causes

A cause is the panic message (numbers replaced by N) and the innermost frame
inside this repository (rust/kernels or fuzz/rust), or the AddressSanitizer
error kind and its innermost repository frame; an input that no longer
crashes is ``fixed``. Prints one line per cause: count, cause, one input.
Stdlib only; the target binary must be built (fuzz/run.sh build).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.join(HERE, "target", "x86_64-unknown-linux-gnu", "release")
ROOT = os.path.dirname(os.path.dirname(HERE))
FRAME = re.compile(r"^\s+\d+: (\S+)(?:\n\s+at (\S+?):(\d+))?", re.M)
ASAN_FRAME = re.compile(r"#\d+ 0x[0-9a-f]+ in (\S+) (/\S+?):(\d+)")
MACHINERY = ("core::", "std::", "__rust", "rust_begin", "alloc::", "<", "mul", "add", "sub",
             "fold", "product", "sum", "{closure")


def innermost(out: str) -> str:
    """The first frame of the panic's (or ASan's) stack that is not the panic machinery
    or an inlined arithmetic helper: ``function (file:line)`` where the file is ours."""
    for name, path, line in FRAME.findall(out) + ASAN_FRAME.findall(out):
        if name.startswith(MACHINERY) or (path and "/rustc/" in path):
            continue
        here = f" ({os.path.relpath(path, ROOT)}:{line})" if path.startswith(ROOT) else ""
        return name + here
    return "?"


def cause(binary: str, path: str) -> str:
    env = {**os.environ, "RUST_BACKTRACE": "1"}
    try:
        p = subprocess.run([binary, "-rss_limit_mb=2048", "-timeout=30", path], env=env,
                           capture_output=True, text=True, errors="replace", timeout=120)
    except subprocess.TimeoutExpired:
        return "hang (over 120 s)"
    out = p.stderr + p.stdout
    if p.returncode == 0:
        return "fixed"
    where = innermost(out)
    m = re.search(r"panicked at [^\n]*\n(.*)", out)
    if m:
        message = re.sub(r"\d+", "N", m.group(1).strip())[:160]
        return f"panic: {message} @ {where}"
    m = re.search(r"ERROR: AddressSanitizer: ([\w-]+)", out)
    if m:
        return f"asan {m.group(1)} @ {where}"
    m = re.search(r"ERROR: libFuzzer: ([\w-]+)", out)
    if m:
        return f"libfuzzer {m.group(1)} @ {where}"
    return f"exit {p.returncode} @ {where}"


def main(argv) -> int:
    brief = "--brief" in argv
    argv = [a for a in argv if a != "--brief"]
    if len(argv) < 1:
        print(__doc__)
        return 2
    binary = argv[0] if os.sep in argv[0] else os.path.join(BIN, argv[0])
    groups: dict = {}
    for path in argv[1:]:
        groups.setdefault(cause(binary, path), []).append(path)
    real = {k: v for k, v in groups.items() if k != "fixed"}
    if brief:
        print(len(real))
        return 0
    for key, paths in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        print(f"{len(paths):5d}  {key}  e.g. {paths[0]}")
    return 1 if real else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
