"""GFLOP/s of the rust backend's matmul against NumPy (OpenBLAS), one process.

Run: python benches/bench_native_matmul.py [--threads 2] [--repeats 9]
     [--only square,train,decode]
Not part of the test run. Each contender is timed in its own block of
repeats (the block's median), with a pause before each: OpenBLAS's threads
busy-wait for a while after each call, and interleaving the two would
leave our threads sharing the cores with them. The blocks take turns for
--rounds rounds (which goes first alternates). The square section reports
both the best round of each contender and the median over rounds of the
per-round ratio: the cores are shared and their speed drifts by up to 1.5x
within minutes, so a ratio of two blocks taken seconds apart is steadier
than a ratio of two bests (one lucky round decides those).

Sections:
- square: the issue's three GEMM sizes (plain and trans_b for ours);
- train: the GEMMs of a GPT training step (6 layers, d_model 384, B*T =
  2048 rows): each linear layer's forward `x @ W.T`, and its backward
  products `dX = dY @ W` and `dW = dY.T @ X`, as `linear_forward` /
  `linear_backward` call them, plus the whole `linear_backward`;
- decode: batch-1..4 decoding, `x (m, k) @ W.T` with W `(n, k)`, in GB/s
  of W streamed.
"""

import argparse
import time
from statistics import median

import numpy as np

import ferroformer as ff
from ferroformer.bench import call_times

ops = ff.backend("rust")

SQUARE = [(2048, 768, 3072), (2048, 3072, 768), (512, 512, 512)]
ROWS = 2048
D = 384
# (out, in) of the model's linear layers: qkv, attention out, mlp up, mlp
# down, vocabulary head.
TRAIN_W = [(3 * D, D), (D, D), (4 * D, D), (D, 4 * D), (256, D)]
DECODE_W = [(2304, 768), (768, 768), (3072, 768), (50257, 768)]
DECODE_M = [1, 2, 4, 8]


ROUNDS = 3


def rounds(fns, repeats, pause):
    """Per-round seconds of each function: each is timed in its own block
    of `repeats` calls (the block's median), the blocks of all functions
    taking turns for ROUNDS rounds, the order reversed every other round."""
    out = [[] for _ in fns]
    for r in range(ROUNDS):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            time.sleep(pause)
            out[i].append(median(call_times(fns[i], repeats)))
    return out


def seconds(fns, repeats, pause):
    """The best round of each function (see `rounds`), which drops rounds
    slowed by other jobs on the shared cores."""
    return [min(r) for r in rounds(fns, repeats, pause)]


def paired_ratio(ref, ours):
    """Median over rounds of ref time / our time, each round's two blocks
    taken seconds apart."""
    return median(a / b for a, b in zip(ref, ours))


def square(rng, args):
    print("## square GEMMs (GFLOP/s)")
    for m, k, n in SQUARE:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        w = np.ascontiguousarray(b.T)
        r_ours, r_trans, r_np = rounds(
            [
                lambda: ops.matmul(a, b),
                lambda: ops.matmul(a, w, trans_b=True),
                lambda: a @ b,
            ],
            args.repeats,
            args.pause,
        )
        t_ours, t_trans, t_np = min(r_ours), min(r_trans), min(r_np)
        g = 2.0 * m * n * k / 1e9
        print(
            f"m={m} k={k} n={n}: best rounds ours {g / t_ours:.0f} (trans_b {g / t_trans:.0f}) "
            f"numpy {g / t_np:.0f} GFLOP/s, ratio {t_np / t_ours:.2f} "
            f"(trans_b {t_np / t_trans:.2f}); median per-round ratio "
            f"{paired_ratio(r_np, r_ours):.2f} (trans_b {paired_ratio(r_np, r_trans):.2f}) "
            f"over {len(r_ours)} rounds"
        )


def train(rng, args):
    print(f"## training GEMMs, rows={ROWS} (GFLOP/s, ratio = numpy time / ours)")
    tot_ours = tot_np = 0.0
    for out_f, in_f in TRAIN_W:
        x = rng.standard_normal((ROWS, in_f), dtype=np.float32)
        w = rng.standard_normal((out_f, in_f), dtype=np.float32) * 0.05
        dy = rng.standard_normal((ROWS, out_f), dtype=np.float32)
        g = 2.0 * ROWS * in_f * out_f / 1e9
        cases = [
            ("fwd  x@W.T ", lambda: ops.linear_forward(x, w), lambda: x @ w.T),
            ("dX  dY@W   ", lambda: ops.matmul(dy, w), lambda: dy @ w),
            ("dW  dY.T@X ", lambda: ops.matmul(dy, x, trans_a=True), lambda: dy.T @ x),
        ]
        for name, ours, ref in cases:
            r_ours, r_np = rounds([ours, ref], args.repeats, args.pause)
            t_ours, t_np = min(r_ours), min(r_np)
            tot_ours += t_ours
            tot_np += t_np
            print(
                f"{name} (out={out_f:4d}, in={in_f:4d}): ours {g / t_ours:4.0f} "
                f"numpy {g / t_np:4.0f} GFLOP/s, ratio {t_np / t_ours:.2f} "
                f"(median per-round {paired_ratio(r_np, r_ours):.2f})"
            )
        t_ours, t_np = seconds(
            [
                lambda: ops.linear_backward(dy, x, w, has_bias=True),
                lambda: (dy @ w, dy.T @ x, dy.sum(0)),
            ],
            args.repeats,
            args.pause,
        )
        print(
            f"linear_backward (out={out_f:4d}, in={in_f:4d}): ours {2 * g / t_ours:4.0f} "
            f"numpy {2 * g / t_np:4.0f} GFLOP/s, ratio {t_np / t_ours:.2f}"
        )
    print(
        f"sum of the single products: ours {tot_ours * 1e3:.1f} ms, numpy "
        f"{tot_np * 1e3:.1f} ms, ratio {tot_np / tot_ours:.2f}"
    )


def decode(rng, args):
    print("## decode x(m,k) @ W.T, W (n,k) (GB/s of W; ratio = numpy time / ours)")
    for n, k in DECODE_W:
        w = rng.standard_normal((n, k), dtype=np.float32)
        gb = w.nbytes / 1e9
        for m in DECODE_M:
            x = rng.standard_normal((m, k), dtype=np.float32)
            t_ours, t_np = seconds(
                [lambda: ops.matmul(x, w, trans_b=True), lambda: x @ w.T],
                args.repeats * 3,
                args.pause,
            )
            print(
                f"m={m} n={n:5d} k={k}: ours {t_ours * 1e3:7.3f} ms ({gb / t_ours:5.1f} GB/s) "
                f"numpy {t_np * 1e3:7.3f} ms ({gb / t_np:5.1f} GB/s), ratio {t_np / t_ours:.2f}"
            )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--pause", type=float, default=1.0)
    p.add_argument("--only", default="square,train,decode")
    p.add_argument("--rounds", type=int, default=ROUNDS)
    args = p.parse_args()
    globals()["ROUNDS"] = args.rounds
    ff.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"simd={ff.simd_level()} threads={args.threads}")
    sections = {"square": square, "train": train, "decode": decode}
    for name in args.only.split(","):
        sections[name](rng, args)


if __name__ == "__main__":
    main()
