"""The command line: ``python -m ferroformer <command>``; ``--help`` on each.

Every failure is one ``error:`` line on stderr: exit code 2 for a bad argument
(argparse's usage errors), 1 for a failure while running, 130 for Ctrl-C;
``--debug`` prints the traceback as well."""

from __future__ import annotations

import sys
import traceback
from typing import List, Optional

from .parser import COMMANDS, build_parser, command_module

__all__ = ["COMMANDS", "build_parser", "error_line", "main"]


# failures whose message is meant for the user as it stands; any other exception is
# a bug, reported with its type
EXPECTED = (ValueError, OSError, RuntimeError, ImportError, IndexError, MemoryError)


def error_line(e: BaseException) -> str:
    """One line for stderr that says what went wrong."""
    if isinstance(e, OSError) and e.filename and e.strerror:
        text = f"{e.filename}: {e.strerror}"
    else:
        text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, MemoryError):
        text = f"out of memory: {text}" if str(e) else "out of memory"
    elif not isinstance(e, EXPECTED) or isinstance(e, (RecursionError, NotImplementedError)):
        text = f"unexpected {type(e).__name__}: {text} (--debug shows the traceback)"
    return f"error: {text}"


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return command_module(args.command).run(args)
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            traceback.print_exc()
        print(error_line(e), file=sys.stderr)
        return 1
