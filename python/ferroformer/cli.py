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


def _cmd_embed(args) -> int:
    from .pretrained import load
    from .pretrained.minilm import embed

    model, tok = load("all-MiniLM-L6-v2", backend=args.backend)
    e = embed(model, tok, args.sentences)
    sim = e @ e.T
    width = max(len(s) for s in args.sentences)
    print("cosine similarity (all-MiniLM-L6-v2)")
    for i, s in enumerate(args.sentences):
        print(f"{s:<{width}}  " + "  ".join(f"{v:6.4f}" for v in sim[i]))
    return 0


def _cmd_chat(args) -> int:
    from .pretrained import load
    from .pretrained.smollm import chat

    model, tok = load("SmolLM2-135M-Instruct", backend=args.backend)
    print(chat(model, tok, args.question, max_new_tokens=args.max_new_tokens))
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
    e = sub.add_parser("embed", help="sentence embeddings with all-MiniLM-L6-v2: cosine similarities")
    e.add_argument("sentences", nargs="+", help="sentences to compare")
    e.add_argument("--backend", choices=["numpy", "rust", "cupy"], default=None)
    e.set_defaults(func=_cmd_embed)
    c = sub.add_parser("chat", help="answer a question with SmolLM2-135M-Instruct (greedy)")
    c.add_argument("question")
    c.add_argument("--backend", choices=["numpy", "rust", "cupy"], default=None)
    c.add_argument("--max-new-tokens", type=int, default=64)
    c.set_defaults(func=_cmd_chat)
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
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
