"""GFLOP/s of ferroformer._native.matmul against NumPy (OpenBLAS), one process.

Run: python benches/bench_native_matmul.py [--threads 2] [--repeats 9]
Not part of the test run. Each contender is timed in its own block of
repeats (medians reported), with a pause before ours: OpenBLAS's threads
busy-wait for a while after each call, and interleaving the two would
leave our threads sharing the cores with them.
"""

import argparse
import time
from statistics import median

import numpy as np

from ferroformer import _native

SHAPES = [(2048, 768, 3072), (2048, 3072, 768), (512, 512, 512)]


def seconds(fns, repeats):
    """Median seconds of each function, each timed in its own block."""
    out = []
    for fn in fns:
        time.sleep(2.0)
        fn()
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        out.append(median(ts))
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=9)
    args = p.parse_args()
    _native.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"simd={_native.simd_level()} threads={args.threads}")
    for m, k, n in SHAPES:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        w = np.ascontiguousarray(b.T)
        t_ours, t_trans, t_np = seconds(
            [
                lambda: _native.matmul(a, b, False, False),
                lambda: _native.matmul(a, w, False, True),
                lambda: a @ b,
            ],
            args.repeats,
        )
        g = 2.0 * m * n * k / 1e9
        print(
            f"m={m} k={k} n={n}: ours {g / t_ours:.0f} (trans_b {g / t_trans:.0f}) "
            f"numpy {g / t_np:.0f} GFLOP/s, ratio {t_np / t_ours:.2f}"
        )
    x = rng.standard_normal((1, 768), dtype=np.float32)
    w = rng.standard_normal((50257, 768), dtype=np.float32)
    t_ours, t_np = seconds([lambda: _native.matmul(x, w, False, True), lambda: x @ w.T], args.repeats)
    gbs = w.nbytes / 1e9
    print(
        f"gemv x(1,768) @ W.T: ours {t_ours * 1e3:.2f} ms ({gbs / t_ours:.1f} GB/s), "
        f"numpy {t_np * 1e3:.2f} ms ({gbs / t_np:.1f} GB/s)"
    )


if __name__ == "__main__":
    main()
