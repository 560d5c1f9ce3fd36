"""``bench``: time each op on every backend (and PyTorch, if installed), then a
training step per backend."""

from __future__ import annotations

import platform

from .args import BACKENDS, add_command, int_in, positive_int

MAX_THREADS = 1024  # a rust pool beyond this is a typo, and starting it takes minutes


def add_parser(sub) -> None:
    p = add_command(sub, "bench", "time each op on every backend (and PyTorch, if installed)")
    p.add_argument(
        "--backends",
        nargs="+",
        choices=BACKENDS,
        help="backends to time (default: every available one)",
    )
    p.add_argument(
        "--repeat", type=positive_int, default=5, help="timings per op; the best is kept"
    )
    p.add_argument(
        "--threads",
        type=int_in(0, MAX_THREADS),
        default=0,
        help="rust thread pool size (default 0: all cores)",
    )
    p.add_argument("--no-torch", action="store_true", help="leave PyTorch out even if installed")
    p.add_argument("--no-train", action="store_true", help="skip the training-throughput table")
    p.add_argument(
        "--train-steps",
        type=positive_int,
        default=3,
        help="timed training steps per backend (after one warm-up step)",
    )


def run(args) -> int:
    from .. import available_backends, set_num_threads
    from ..bench import format_table, run_table

    if args.threads:
        set_num_threads(args.threads)
    backends = args.backends or [b for b in available_backends() if b in ("numpy", "rust", "cupy")]
    print(
        f"ferroformer op benchmark on {platform.processor() or platform.machine()}, "
        f"backends {', '.join(backends)} (best of {args.repeat})",
        flush=True,
    )
    print(format_table(run_table(backends, repeat=args.repeat, with_torch=not args.no_torch)))
    if args.no_train:
        return 0
    from ..bench_train import SIZE, format_train_table, run_train_table, torch_available

    names = backends + (["torch"] if not args.no_torch and torch_available() else [])
    print(f"\ntraining throughput, {SIZE} (mean of {args.train_steps} steps)", flush=True)
    print(format_train_table(run_train_table(names, rounds=args.train_steps)))
    return 0
