"""Causal attention forward and forward+backward at B=4, H=12, T=1024, D=64:
rust (fused flash kernel) vs the numpy backend vs PyTorch's
scaled_dot_product_attention on the CPU (only when torch imports), in one
process.

    python benches/bench_attention.py        # prints a Markdown table
    pytest benches/bench_attention.py        # pytest-benchmark
"""

from __future__ import annotations

import numpy as np
import pytest

import ferroformer as ff
from ferroformer.bench import best_of

B, H, T, D = 4, 12, 1024, 64


def _inputs():
    rng = np.random.default_rng(0)
    return [rng.standard_normal((B, H, T, D), dtype=np.float32) for _ in range(4)]


def ff_fwd(ops, q, k, v, do):
    return ops.attention_forward(q, k, v, causal=True)


def ff_fwd_bwd(ops, q, k, v, do):
    o, lse = ops.attention_forward(q, k, v, causal=True)
    return ops.attention_backward(do, q, k, v, o, lse, causal=True)


def torch_fns(q, k, v, do):
    import torch
    import torch.nn.functional as F

    tq, tk, tv, tdo = (torch.from_numpy(a) for a in (q, k, v, do))

    def fwd():
        with torch.no_grad():
            return F.scaled_dot_product_attention(tq, tk, tv, is_causal=True)

    def fwd_bwd():
        a, b, c = (t.detach().requires_grad_(True) for t in (tq, tk, tv))
        F.scaled_dot_product_attention(a, b, c, is_causal=True).backward(tdo)
        return a.grad

    return fwd, fwd_bwd


@pytest.mark.parametrize("name", [n for n in ff.available_backends() if n in ("numpy", "rust")])
@pytest.mark.parametrize("what", [ff_fwd, ff_fwd_bwd], ids=["fwd", "fwd+bwd"])
def test_attention(benchmark, name, what):
    ops, args = ff.backend(name), _inputs()
    benchmark.group = what.__name__
    benchmark(what, ops, *args)


def main():
    args = _inputs()
    rows = {}
    for name in ("rust", "numpy"):
        ops = ff.backend(name)
        rows[name] = [best_of(lambda f=f: f(ops, *args), 3) for f in (ff_fwd, ff_fwd_bwd)]
    try:
        rows["torch sdpa"] = [best_of(f, 3) for f in torch_fns(*args)]
    except ImportError:
        pass
    print(f"causal attention, B={B} H={H} T={T} D={D}, float32, best of 3 (ms)\n")
    print("| impl | forward | forward+backward | rust speedup (fwd / fwd+bwd) |")
    print("|---|---:|---:|---:|")
    r = rows["rust"]
    for name, (f, fb) in rows.items():
        print(f"| {name} | {f * 1e3:.1f} | {fb * 1e3:.1f} | {f / r[0]:.2f}x / {fb / r[1]:.2f}x |")


if __name__ == "__main__":
    main()
