"""The command line: ``python -m ferroformer <command>``; ``--help`` on each."""

from __future__ import annotations

import argparse
import platform
import sys
from typing import List, Optional


def _cmd_bench(args) -> int:
    from . import available_backends, set_num_threads
    from .bench import format_table, run_table

    if args.threads:
        set_num_threads(args.threads)
    backends = args.backends or [b for b in available_backends() if b in ("numpy", "rust", "cupy")]
    print(f"ferroformer op benchmark on {platform.processor() or platform.machine()}, "
          f"backends {', '.join(backends)} (best of {args.repeat})", flush=True)
    print(format_table(run_table(backends, repeat=args.repeat, with_torch=not args.no_torch)))
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(backend=args.backend, n_digits=args.digits, steps=args.steps, seed=args.seed,
             progress=not args.no_progress)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ferroformer", description=__doc__)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    b = sub.add_parser("bench", help="time each op on every backend (and PyTorch, if installed)")
    b.add_argument("--backends", nargs="+", choices=["numpy", "rust", "cupy"],
                   help="backends to time (default: every available one)")
    b.add_argument("--repeat", type=int, default=5, help="timings per op; the best is kept")
    b.add_argument("--threads", type=int, default=0, help="rust thread pool size (default: all cores)")
    b.add_argument("--no-torch", action="store_true", help="leave PyTorch out even if installed")
    b.set_defaults(func=_cmd_bench)
    d = sub.add_parser("demo", help="train a small GPT on addition, then generate (about a minute)")
    d.add_argument("--backend", choices=["numpy", "rust", "cupy"], default=None,
                   help="backend to train on (default: the fastest available)")
    d.add_argument("--digits", type=int, default=3, help="digits per operand")
    d.add_argument("--steps", type=int, default=1800, help="training steps")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
