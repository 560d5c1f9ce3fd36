"""Fuzz target: the command line, ``ferroformer.cli.main(argv)`` in-process.

Each input builds an argv: a command (or none, or a stray token), then flags
of that command (read from the parser itself, so new flags are fuzzed too)
with values drawn by the flag's kind: numbers near and past their bounds and
in odd spellings, choices and near-choices, paths from a fixed set (a real
`train` checkpoint and run directory, a damaged file, an empty directory, a
FIFO, /dev/null, a missing path, a foreign checkpoint), free text; sometimes
a flag without its value, a repeated flag, an unknown one or a raw token.

Verdicts: main returns (or argparse exits with) 0, 1 or 2; on a non-zero code
stderr holds exactly one ``error:`` line (no command at all: exit 2 with the
help, no error line); never a traceback (unless --debug), never an
``error: unexpected ...`` line (the CLI's own word for an exception it did not
expect: a bug), never longer than ``TIME_LIMIT`` (a hang is stopped by the
harness alarm).

Commands that would run for long are only parsed: bench, demo, embed and chat
run only when their arguments fail to parse (exit 2); train runs only when its
settings are tiny (steps <= 5, d_model <= 64, ...), otherwise only its parse is
checked. Every run happens in a scratch directory (the process's cwd), and
paths are drawn from inside it.

    python fuzz/python/fuzz_cli.py -max_total_time=60 fuzz/work/py-cli
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import io
import os
import re
import shutil
import sys
import tempfile

import atheris

with atheris.instrument_imports():
    import importlib

    import ferroformer
    import ferroformer.checkpoint
    import ferroformer.generate
    import ferroformer.models
    import ferroformer.train  # noqa: F401
    from ferroformer import cli

    for _name in getattr(cli, "COMMANDS", ()):  # each command's module, loaded lazily by main
        importlib.import_module(f"ferroformer.cli.{_name}")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness

ALLOWED = ()  # main must not raise: every failure is an exit code
HIDDEN = ()
TIME_LIMIT = 10.0
HEAVY = ("bench", "demo", "embed", "chat")  # parsed only
TINY_TRAIN = {
    "steps": 5,
    "d_model": 64,
    "layers": 2,
    "heads": 8,
    "batch_size": 16,
    "seq_len": 64,
    "length": 16,
    "eval_examples": 20,
    "digits": 9,
}
_DIR = tempfile.mkdtemp(prefix="ferroformer-fuzz-cli-")
atexit.register(shutil.rmtree, _DIR, True)
_TEMPLATE = os.path.join(_DIR, "template")  # the fixtures, made once
_WORK = os.path.join(_DIR, "work")  # a fresh copy of them per input, the cwd of main
#: path choices, relative to the scratch directory
PATHS = (
    "run",
    "run/step-00000002.safetensors",
    "fresh",
    "fresh/x.png",
    "empty",
    "garbage.bin",
    "fifo",
    "/dev/null",
    "missing",
    "missing/x.png",
    "foreign.safetensors",
    "badrun",
    "plot.png",
    "",
    ".",
    "run/",
    "empty/",
    "garbage.bin/x",
    "x\0y",
)
INTS = (
    "0",
    "1",
    "2",
    "3",
    "5",
    "-1",
    "8",
    "64",
    "1025",
    "99999999999999999999",
    "1e3",
    "0x10",
    "\u0663",
    "1_0",
    " 2",
    "abc",
    "",
    "nan",
    "2.5",
    "+3",
    "-0",
)
FLOATS = ("0", "0.5", "1e-3", "1", "-1", "nan", "inf", "-inf", "1e309", "abc", "", "1e-320", "2")
TEXT = (
    "12+34",
    "1+2",
    "123",
    "31415",
    "",
    " ",
    "a",
    "\u00e9\u4e2d",
    "9" * 40,
    "-1",
    "--x",
    "1+",
    "0+0",
    "\n",
    "abc def",
)
_setup_done = []


def _setup() -> None:
    os.makedirs(_TEMPLATE)
    os.chdir(_TEMPLATE)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = cli.main(
            [
                "train",
                "--task",
                "copy",
                "--length",
                "3",
                "--layers",
                "1",
                "--d-model",
                "8",
                "--heads",
                "2",
                "--batch-size",
                "2",
                "--steps",
                "2",
                "--eval-examples",
                "0",
                "--no-progress",
                "--checkpoint-dir",
                "run",
            ]
        )
    if code != 0:
        raise RuntimeError("fuzz_cli: the fixture run failed to train")
    os.makedirs("empty")
    with open("garbage.bin", "wb") as f:
        f.write(b"\x08\0\0\0\0\0\0\0{garbage")
    os.makedirs("badrun")
    with open("badrun/step-00000001.safetensors", "wb") as f:
        f.write(b"not a checkpoint")
    from ferroformer.checkpoint import save_checkpoint
    from ferroformer.models import GPT

    save_checkpoint(
        "foreign.safetensors",
        GPT(vocab_size=8, max_seq_len=8, d_model=8, n_heads=2, n_layers=1, rng=0),
    )
    _setup_done.append(True)


def _fresh_dirs() -> None:
    """A fresh copy of the fixtures as the cwd (a run may write into any of them), and the FIFO."""
    os.chdir(_DIR)
    shutil.rmtree(_WORK, ignore_errors=True)
    shutil.copytree(_TEMPLATE, _WORK)
    os.mkfifo(os.path.join(_WORK, "fifo"))
    os.chdir(_WORK)


# -- what the parser accepts ---------------------------------------------------------------
def _commands():
    """{command: [(option strings, kind, choices)]} from the parser."""
    parser = cli.build_parser()
    out = {None: _flags(parser)}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[name] = _flags(sub)
    return out


def _kind(action) -> str:
    if action.nargs == 0:
        return "flag"
    if action.choices:
        return "choice"
    name = (action.metavar or "") + " " + action.dest
    if re.search(r"PATH|DIR|checkpoint|plot", name) and action.type is None:
        return "path"
    if action.type is float or getattr(action.type, "__name__", "") == "_positive_float":
        return "float"
    if action.type is int or getattr(action.type, "__name__", "") in ("parse", "_positive_int"):
        return "int"
    if action.type is not None and action.type is not str:
        return "int"
    return "text"


def _flags(parser):
    flags = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        kind = _kind(action)
        flags.append(
            (tuple(action.option_strings), kind, tuple(action.choices or ()), action.nargs)
        )
    return flags


COMMANDS = None


# -- building an argv --------------------------------------------------------------------------
def _raw(fdp) -> str:
    """A free token: never an absolute path or one that leaves the scratch directory."""
    s = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 12))
    if s.startswith("/") or ".." in s:
        s = "raw-" + s.replace("/", "_")
    return s


def _value(fdp, kind, choices):
    pick = fdp.ConsumeIntInRange(0, 7)
    if kind == "choice":
        if pick < 6:
            return choices[fdp.ConsumeIntInRange(0, len(choices) - 1)]
        return (
            fdp.PickValueInList(["", "NUMPY", "rust ", "cuda", "gpt2"]) if pick == 6 else _raw(fdp)
        )
    table = {"int": INTS, "float": FLOATS, "path": PATHS, "text": TEXT}[kind]
    if pick == 7 and kind != "path":
        return _raw(fdp)
    return fdp.PickValueInList(list(table))


def build_argv(data: bytes):
    fdp = atheris.FuzzedDataProvider(data)
    argv = []
    names = [c for c in COMMANDS if c is not None]
    first = fdp.ConsumeIntInRange(0, len(names) + 3)
    command = None
    if fdp.ConsumeIntInRange(0, 15) == 0:
        argv.append(fdp.PickValueInList(["--debug", "--help", "--version", "-h"]))
    if first < len(names):
        command = names[first]
        argv.append(command)
    elif first == len(names):
        argv.append(_raw(fdp))
    flags = COMMANDS[command]
    if command == "train" and fdp.ConsumeIntInRange(0, 3):
        # mostly a tiny run, so that train gets past its parse and runs
        argv += [
            "--steps",
            fdp.PickValueInList(["1", "2", "3"]),
            "--d-model",
            "8",
            "--heads",
            fdp.PickValueInList(["1", "2"]),
            "--layers",
            "1",
            "--batch-size",
            "2",
            "--eval-examples",
            fdp.PickValueInList(["0", "0", "3"]),
            "--no-progress",
        ]
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        what = fdp.ConsumeIntInRange(0, 15)
        if what == 0:
            argv.append(_raw(fdp))
            continue
        if what == 1:
            argv.append(
                fdp.PickValueInList(
                    ["--", "-", "--nope", "-x", "--steps=3", "--d-model=0", "--debug", "-h"]
                )
            )
            continue
        options, kind, choices, nargs = flags[fdp.ConsumeIntInRange(0, len(flags) - 1)]
        if not options:  # a positional argument
            argv.append(_value(fdp, kind, choices))
            continue
        option = options[fdp.ConsumeIntInRange(0, len(options) - 1)]
        if option in ("-h", "--help", "--version") and fdp.ConsumeIntInRange(0, 3):
            continue
        argv.append(option)
        if kind == "flag":
            continue
        count = 1 if nargs in (None, "?") else fdp.ConsumeIntInRange(1, 3)
        if fdp.ConsumeIntInRange(0, 11) == 0:
            count = 0  # the value left out
        argv += [_value(fdp, kind, choices) for _ in range(count)]
    return argv


# -- running and judging ----------------------------------------------------------------------
def _runs(argv) -> bool:
    """Whether main is called: always when the arguments do not parse; a parsed heavy
    command or a train run beyond TINY_TRAIN is left alone."""
    parser = cli.build_parser()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            args = parser.parse_args(argv)
    except SystemExit:
        return True
    command = getattr(args, "command", None)
    if command in HEAVY:
        return False
    if command == "train":
        resume = getattr(args, "resume", False)
        for key, most in TINY_TRAIN.items():
            value = getattr(args, key, None)
            if value is None and not resume and key in ("steps", "eval_examples"):
                return False  # the defaults (800 steps, 500 examples) are not tiny
            if value is not None and value > most:
                return False
    return True


ERROR_LINE = re.compile(r"(^|: )error: ")


def one_input(data: bytes) -> None:
    global COMMANDS
    if not _setup_done:
        _setup()
        COMMANDS = _commands()
    argv = build_argv(data)
    harness.label = argv[0] if argv and argv[0] in COMMANDS else "-"
    if not _runs(argv):
        return
    _fresh_dirs()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(argv))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    stderr = err.getvalue()
    shown = f"argv {argv!r}: exit {code}, stderr {stderr[-400:]!r}"
    if code not in (0, 1, 2):
        raise harness.Finding(f"exit-{code}", shown)
    if "Traceback (most recent call last)" in stderr and "--debug" not in argv:
        raise harness.Finding("traceback", shown)
    errors = [line for line in stderr.splitlines() if ERROR_LINE.search(line)]
    if any("error: unexpected " in line for line in errors):
        kind = re.search(r"error: unexpected (\w+)", stderr).group(1)
        raise harness.Finding(f"unexpected-{kind}", shown)
    no_command = code == 2 and not errors and "usage:" in out.getvalue()
    if code != 0 and len(errors) != 1 and not no_command:
        raise harness.Finding(f"error-lines-{min(len(errors), 2)}", shown)
    if code == 0 and errors:
        raise harness.Finding("error-on-success", shown)


def _absolute(argv):
    """libFuzzer's paths made absolute: the target works in its scratch directory."""
    out = []
    for a in argv:
        if a.startswith("-") and "=" in a:
            flag, value = a.split("=", 1)
            if flag in ("-artifact_prefix", "-exact_artifact_path", "-dict", "-seed_inputs"):
                a = f"{flag}={os.path.abspath(value)}" + ("/" if value.endswith("/") else "")
        elif not a.startswith("-"):
            a = os.path.abspath(a)
        out.append(a)
    return out


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *_absolute(sys.argv[1:])]
    harness.run(one_input, ALLOWED, hidden=HIDDEN, time_limit=TIME_LIMIT)
