"""Resident memory over many op calls, good and refused, on one backend; a leak shows
as growth between the rounds:

    python fuzz/python/leak_check.py rust      # or numpy
"""

from __future__ import annotations

import gc
import sys

import numpy as np

import ferroformer as ff


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


def main(name: str) -> None:
    ops = ff.backend(name)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 4), np.float32)
    b = rng.standard_normal((4, 5), np.float32)
    x = rng.standard_normal((2, 3, 8), np.float32)
    g, be = np.ones(8, np.float32), np.zeros(8, np.float32)
    bad = rng.standard_normal((3, 7), np.float32)

    def good():
        ops.matmul(a, b)
        ops.layernorm_forward(x, g, be)
        ops.softmax_forward(x)
        ops.gelu_forward(x)

    refused = (
        lambda: ops.matmul(a, bad),
        lambda: ops.layernorm_forward(x, g[:3], be),
        lambda: ops.matmul(a.astype(np.int32), b),
    )

    def errors():
        for f in refused:
            try:
                f()
            except (ValueError, TypeError):
                pass

    for label, fn in (("good", good), ("refused", errors)):
        for i in range(3):
            for _ in range(30000):
                fn()
            gc.collect()
            print(f"{name} {label} round {i}: {rss_mb():.1f} MB", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "rust")
