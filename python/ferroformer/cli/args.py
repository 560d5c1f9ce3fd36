"""Argument helpers every command shares: the subcommand's parser (with the
``--debug`` flag), ``--backend``, and the argparse types (integers and floats
in range)."""

from __future__ import annotations

import argparse
import math

BACKENDS = ["numpy", "rust", "cupy"]
# --debug after the command too; SUPPRESS keeps a subcommand from resetting the global one
DEBUG = argparse.ArgumentParser(add_help=False)
DEBUG.add_argument(
    "--debug",
    action="store_true",
    default=argparse.SUPPRESS,
    help="on failure, print the traceback too",
)


def add_command(sub, name: str, help: str, description=None) -> argparse.ArgumentParser:
    """The parser of one subcommand: ``help`` is its line in the top-level --help,
    ``description`` heads its own --help; every command takes --debug."""
    return sub.add_parser(name, help=help, parents=[DEBUG], description=description)


def add_backend(p, help=None) -> None:
    """``--backend``, one of BACKENDS; None when not given (the command's default)."""
    p.add_argument("--backend", choices=BACKENDS, default=None, help=help)


def int_in(low, high=None):
    """An argparse type: an integer in [low, high] (no upper bound when high is None)."""
    kind = {0: "non-negative", 1: "positive"}.get(low, "") if high is None else ""

    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if v < low or (high is not None and v > high):
            rule = f"a {kind} integer" if kind else f"an integer in {low}..{high}"
            raise argparse.ArgumentTypeError(f"must be {rule}, got {v}")
        return v

    return parse


positive_int, non_negative_int = int_in(1), int_in(0)


def positive_float(text):
    """An argparse type: a finite float > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v
