"""``demo``: a small GPT learns 3-digit addition, then answers (about a minute)."""

from __future__ import annotations

from .args import add_backend, add_command, int_in, non_negative_int, positive_int


def add_parser(sub) -> None:
    p = add_command(sub, "demo", "train a small GPT on addition, then generate (about a minute)")
    add_backend(p, help="backend to train on (default: the fastest available)")
    p.add_argument("--digits", type=int_in(1, 9), default=3, help="digits per operand (1-9)")
    p.add_argument("--steps", type=positive_int, default=1800, help="training steps")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from ..demo import run_demo

    run_demo(
        backend=args.backend,
        n_digits=args.digits,
        steps=args.steps,
        seed=args.seed,
        progress=not args.no_progress,
    )
    return 0
