"""Op timings at the sizes of one GPT-2-small layer, shared by
``python -m ferroformer bench`` and the pytest-benchmark suite in benches/.

Each case builds its float32 inputs once and times one forward+backward (or
one call, for matmul) per backend; PyTorch joins as a peer only when it is
installed. Ratios are taken within one process run, since machines are
shared and noisy.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np

# B·T rows, model width, vocabulary: one GPT-2-small layer
ROWS, WIDTH, VOCAB = 2048, 768, 8192


@dataclass
class Case:
    name: str
    size: str
    make: Callable[[np.random.Generator], dict]
    run: Callable  # run(ops, inputs) for a ferroformer backend
    torch: Optional[Callable] = None  # torch_run(torch, tensors) as a peer
    flops: float = 0.0  # for GFLOP/s, where it means something


def _matmul_case(m, k, n):
    def make(rng):
        return {
            "a": rng.standard_normal((m, k), np.float32),
            "b": rng.standard_normal((k, n), np.float32),
        }

    return Case(
        name="matmul",
        size=f"{m}x{k}x{n}",
        make=make,
        run=lambda ops, t: ops.matmul(t["a"], t["b"]),
        torch=lambda torch, t: torch.matmul(t["a"], t["b"]),
        flops=2.0 * m * k * n,
    )


def _rows(rng, cols=WIDTH):
    return {
        "x": rng.standard_normal((ROWS, cols), np.float32),
        "dy": rng.standard_normal((ROWS, cols), np.float32),
    }


def _softmax(ops, t):
    y = ops.softmax_forward(t["x"], scale=0.125)
    return ops.softmax_backward(t["dy"], y, scale=0.125)


def _softmax_torch(torch, t):
    x = t["x"].requires_grad_(True)
    y = torch.softmax(x * 0.125, dim=-1)
    y.backward(t["dy"])
    return x.grad


def _layernorm_make(rng):
    t = _rows(rng)
    t["gamma"] = rng.standard_normal(WIDTH, np.float32)
    t["beta"] = rng.standard_normal(WIDTH, np.float32)
    return t


def _layernorm(ops, t):
    _y, mean, rstd = ops.layernorm_forward(t["x"], t["gamma"], t["beta"])
    return ops.layernorm_backward(t["dy"], t["x"], t["gamma"], mean, rstd)


def _layernorm_torch(torch, t):
    x, g, b = (t[k].requires_grad_(True) for k in ("x", "gamma", "beta"))
    torch.nn.functional.layer_norm(x, (WIDTH,), g, b).backward(t["dy"])
    return x.grad


def _gelu(ops, t):
    ops.gelu_forward(t["x"])
    return ops.gelu_backward(t["dy"], t["x"])


def _gelu_torch(torch, t):
    x = t["x"].requires_grad_(True)
    torch.nn.functional.gelu(x, approximate="tanh").backward(t["dy"])
    return x.grad


def _ce_make(rng):
    return {
        "logits": rng.standard_normal((ROWS, VOCAB), np.float32),
        "targets": rng.integers(0, VOCAB, ROWS),
    }


def _ce(ops, t):
    _, lse = ops.cross_entropy_forward(t["logits"], t["targets"])
    return ops.cross_entropy_backward(t["logits"], t["targets"], lse)


def _ce_torch(torch, t):
    z = t["logits"].requires_grad_(True)
    torch.nn.functional.cross_entropy(z, t["targets"]).backward()
    return z.grad


CASES: List[Case] = [
    _matmul_case(2048, 768, 3072),
    _matmul_case(2048, 3072, 768),
    _matmul_case(512, 512, 512),
    Case("softmax fwd+bwd", f"{ROWS}x{WIDTH}", _rows, _softmax, _softmax_torch),
    Case("layernorm fwd+bwd", f"{ROWS}x{WIDTH}", _layernorm_make, _layernorm, _layernorm_torch),
    Case("gelu fwd+bwd", f"{ROWS}x{WIDTH}", _rows, _gelu, _gelu_torch),
    Case("cross-entropy fwd+bwd", f"{ROWS}x{VOCAB}", _ce_make, _ce, _ce_torch),
]


def call_times(fn, repeat: int) -> List[float]:
    """The seconds of each of ``repeat`` calls of ``fn``, after one call to warm up;
    for calls long enough to time one by one (take the median or the minimum)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def best_of(fn, repeat: int, min_time: float = 0.05) -> float:
    """The fastest of ``repeat`` timings (seconds per call), each long enough to be read."""
    fn()  # warm up: first-touch pages, thread pool, lazy compiles
    calls = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        if time.perf_counter() - t0 >= min_time or calls >= 1 << 12:
            break
        calls *= 2
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def run_table(backends: List[str], repeat: int = 5, with_torch: bool = True) -> List[Dict]:
    """Times every case on every backend (and torch, if present) in this process."""
    from . import backend

    torch = _torch() if with_torch else None
    rng = np.random.default_rng(0)
    rows = []
    for case in CASES:
        inputs = case.make(rng)
        row = {"op": case.name, "size": case.size, "flops": case.flops, "times": {}}
        for name in backends:
            ops = backend(name)
            row["times"][name] = best_of(lambda: case.run(ops, inputs), repeat)
        if torch is not None and case.torch is not None:

            def peer():
                tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}
                return case.torch(torch, tensors)

            row["times"]["torch"] = best_of(peer, repeat)
        rows.append(row)
    return rows


def format_table(rows: List[Dict]) -> str:
    """A Markdown table: milliseconds per backend, GFLOP/s for matmul, ratios to numpy/torch."""
    names = list(rows[0]["times"]) if rows else []
    head = ["op", "size"] + [f"{n} ms" for n in names]
    fast = [n for n in names if n not in ("numpy", "torch")]
    for n in fast:
        head.append(f"{n} vs numpy")
        if "torch" in names:
            head.append(f"{n} vs torch")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        t = r["times"]
        cells = [r["op"], r["size"]]
        for n in names:
            cell = f"{t[n] * 1e3:.3f}"
            if r["flops"]:
                cell += f" ({r['flops'] / t[n] / 1e9:.0f} GFLOP/s)"
            cells.append(cell)
        for n in fast:
            cells.append(f"{t['numpy'] / t[n]:.2f}x" if "numpy" in t else "")
            if "torch" in names:
                cells.append(f"{t['torch'] / t[n]:.2f}x" if "torch" in t else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
