"""Streaming read bandwidth of this machine, the wall any batch-1 decoder hits.

A decoder at batch 1 reads every weight once per token, so tokens/s can be at
most ``bandwidth / weight bytes per token``. This script measures the rate at
which ``--threads`` threads stream a buffer much larger than the last-level
cache (1 GB by default), three ways, and reports each in GB/s:

- ``numpy sum``: ``a.sum()`` over a float32 array (NumPy's pairwise sum, one thread);
- ``numpy gemv``: ``x @ W.T`` with one row x over a float32 W (NumPy's BLAS, threaded);
- ``ferroformer gemv``: the same product through ferroformer's rust backend
  (its one-row decode path), when the extension imports.

The best of ``--repeat`` passes is kept for each (the rate the hardware allows;
other jobs on shared cores only ever slow a pass down).

    python benches/bench_bandwidth.py                  # 1 GB, 2 threads
    python benches/bench_bandwidth.py --gb 0.5 --threads 2 --repeat 5

``measure(gb, threads, repeat)`` returns the rates as a dict for other scripts
(benches/bench_llamacpp.py uses it for the fraction of the limit reached).
Not collected by pytest.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Dict

# BLAS threads are fixed when NumPy loads; the bench runs at 2 unless told otherwise
os.environ.setdefault("OPENBLAS_NUM_THREADS", os.environ.get("BENCH_THREADS", "2"))

import numpy as np


def _best(fn, repeat: int) -> float:
    fn()  # warm-up: page faults, thread start
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(gb: float = 1.0, threads: int = 2, repeat: int = 5) -> Dict[str, float]:
    """GB/s (1e9 bytes/s) of each streaming read at ``threads`` threads."""
    k = 1024
    rows = max(1, int(gb * 1e9) // (4 * k))
    w = np.random.default_rng(0).standard_normal((rows, k), dtype=np.float32)
    x = np.ones((1, k), np.float32)
    nbytes = w.nbytes
    rates: Dict[str, float] = {}
    rates["numpy sum (1 thread)"] = nbytes / _best(lambda: w.sum(), repeat) / 1e9
    rates[f"numpy gemv ({threads} threads)"] = nbytes / _best(lambda: x @ w.T, repeat) / 1e9
    try:
        import ferroformer as ff

        ff.set_num_threads(threads)
        rust = ff.backend("rust")
        rates[f"ferroformer gemv ({threads} threads)"] = (
            nbytes / _best(lambda: rust.linear_forward(x, w), repeat) / 1e9
        )
    except Exception as e:  # the extension is optional here
        print(f"ferroformer gemv skipped: {type(e).__name__}: {e}")
    return rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gb", type=float, default=1.0, help="buffer size in GB (default 1)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args()
    rates = measure(a.gb, a.threads, a.repeat)
    print(f"streaming read of {a.gb:g} GB, best of {a.repeat}:")
    print("| reader | GB/s |\n|---|---:|")
    for k, v in rates.items():
        print(f"| {k} | {v:.1f} |")
    print(f"best: {max(rates.values()):.1f} GB/s")


if __name__ == "__main__":
    main()
