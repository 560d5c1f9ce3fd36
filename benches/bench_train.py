"""Training throughput (tokens/s) of a GPT with 6 layers, d_model 384, 6 heads,
T = 256, B = 8, vocab 256, AdamW: one full step (forward, loss, backward,
optimizer) per round, on every backend present, and PyTorch eager as a peer
when ``torch`` imports (never required).

    pytest benches/bench_train.py --benchmark-columns=mean,rounds
    python benches/bench_train.py            # prints tokens/s and the ratios

Not part of the default test run (benches/ is outside ``testpaths``).
"""

from __future__ import annotations

import sys

import pytest

import ferroformer as ff
from ferroformer.bench_train import (
    TOKENS,
    format_train_table,
    make_step,
    run_train_table,
    torch_available,
)


def _peers():
    return list(ff.available_backends()) + (["torch"] if torch_available() else [])


@pytest.mark.parametrize("name", _peers())
def test_train_step_throughput(benchmark, name):
    step = make_step(name)
    step()  # warm-up (allocations, pools)
    benchmark.extra_info["tokens_per_step"] = TOKENS
    benchmark.pedantic(step, rounds=3, iterations=1)
    benchmark.extra_info["tokens_per_s"] = TOKENS / benchmark.stats.stats.mean


def main(rounds: int = 3):
    rates = run_train_table(
        _peers(), rounds, progress=lambda n, r: print(f"{n:6s} {r:9,.0f} tokens/s", flush=True)
    )
    print(format_train_table(rates))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
