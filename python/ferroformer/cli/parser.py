"""The argument parser: the global flags, and one subcommand per module of this
package (each module's ``add_parser``). Parsing runs nothing: the command's
``run`` is looked up only once its arguments are good (see __init__.py)."""

from __future__ import annotations

import argparse
import importlib

from .. import __version__

#: one module of this package per command, in the order --help lists them
COMMANDS = ("bench", "demo", "embed", "chat", "train", "generate", "quantize", "inspect")
DESCRIPTION = """Transformers on NumPy arrays with Rust kernels; --help on each command.

Every failure is one error: line on stderr: exit code 2 for a bad argument,
1 for a failure while running, 130 for Ctrl-C; --debug prints the traceback too."""


def command_module(name: str):
    """The module of one command (``ferroformer.cli.<name>``)."""
    return importlib.import_module(f"{__package__}.{name}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ferroformer",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"ferroformer {__version__}")
    p.add_argument("--debug", action="store_true", help="on failure, print the traceback too")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        command_module(name).add_parser(sub)
    return p
