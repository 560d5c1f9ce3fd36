"""Replays saved inputs through a Python target's verdict, one line per input.

    python fuzz/python/replay.py fuzz_ops fuzz/artifacts/py-ops/crash-*
    python fuzz/python/replay.py fuzz_files --traceback fuzz/regressions/py-files/*

Prints ``ok`` or ``CRASH <key> | <exception>: <message>`` for each file;
``--traceback`` adds the traceback of each crash. Exits 1 if any input
crashed. The target module is imported as it is for fuzzing (atheris must
be installed); the same limits apply (``FUZZ_MEMORY_MB``, ...).
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness


def main(argv) -> int:
    show = "--traceback" in argv
    argv = [a for a in argv if a != "--traceback"]
    if len(argv) < 2:
        print(__doc__)
        return 2
    target = importlib.import_module(argv[0].removesuffix(".py").split("/")[-1])
    harness.set_limits()
    hidden = getattr(target, "HIDDEN", harness.HIDDEN)
    time_limit = getattr(target, "TIME_LIMIT", None)
    bad = 0
    for path in argv[1:]:
        if os.path.isdir(path) or os.path.basename(path) == "crashes.txt":
            continue
        with open(path, "rb") as f:
            data = f.read()
        harness.label = ""
        try:
            harness.check(
                target.one_input, data, target.ALLOWED, hidden=hidden, time_limit=time_limit
            )
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:
            bad += 1
            print(
                f"{path}\tCRASH {harness.signature(e)} | {type(e).__name__}: "
                f"{harness.first_line(e)}",
                flush=True,
            )
            if show:
                traceback.print_exception(e)
            continue
        print(f"{path}\tok", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
