"""The one-shot commands: ``bench`` (the op and training tables), ``demo`` (a small
GPT learns addition), ``embed`` (all-MiniLM-L6-v2) and ``chat`` (SmolLM2). Each
takes the parsed arguments and returns the exit code."""

from __future__ import annotations

import platform
import sys
import time


def bench(args) -> int:
    from .. import available_backends, set_num_threads
    from ..bench import format_table, run_table

    if args.threads:
        set_num_threads(args.threads)
    backends = args.backends or [b for b in available_backends() if b in ("numpy", "rust", "cupy")]
    print(f"ferroformer op benchmark on {platform.processor() or platform.machine()}, "
          f"backends {', '.join(backends)} (best of {args.repeat})", flush=True)
    print(format_table(run_table(backends, repeat=args.repeat, with_torch=not args.no_torch)))
    if args.no_train:
        return 0
    from ..bench_train import SIZE, format_train_table, run_train_table, torch_available

    names = backends + (["torch"] if not args.no_torch and torch_available() else [])
    print(f"\ntraining throughput, {SIZE} (mean of {args.train_steps} steps)", flush=True)
    print(format_train_table(run_train_table(names, rounds=args.train_steps)))
    return 0


def demo(args) -> int:
    from ..demo import run_demo

    run_demo(backend=args.backend, n_digits=args.digits, steps=args.steps, seed=args.seed,
             progress=not args.no_progress)
    return 0


def embed(args) -> int:
    from ..pretrained import load
    from ..pretrained.minilm import embed

    model, tok = load("all-MiniLM-L6-v2", backend=args.backend)
    e = embed(model, tok, args.sentences)
    sim = e @ e.T
    width = max(len(s) for s in args.sentences)
    print("cosine similarity (all-MiniLM-L6-v2)")
    for i, s in enumerate(args.sentences):
        print(f"{s:<{width}}  " + "  ".join(f"{v:6.4f}" for v in sim[i]))
    return 0


def chat(args) -> int:
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
