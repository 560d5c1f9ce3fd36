"""``chat``: answer a question with SmolLM2-135M-Instruct (greedy), streaming the answer."""

from __future__ import annotations

import sys
import time

from .args import BACKENDS, DEBUG, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("chat", help="answer a question with SmolLM2-135M-Instruct (greedy)",
                       parents=[DEBUG])
    p.add_argument("question")
    p.add_argument("--backend", choices=BACKENDS, default=None)
    p.add_argument("--max-new-tokens", type=positive_int, default=64)
    p.add_argument("--verbose", action="store_true", help="print the time taken to stderr")


def run(args) -> int:
    from ..pretrained import load
    from ..pretrained.smollm import chat

    model, tok = load("SmolLM2-135M-Instruct", backend=args.backend)
    t0 = time.perf_counter()
    chat(model, tok, args.question, max_new_tokens=args.max_new_tokens,
         stream=lambda piece: print(piece, end="", flush=True))
    print()
    if args.verbose:
        print(f"({time.perf_counter() - t0:.2f} s)", file=sys.stderr)
    return 0
