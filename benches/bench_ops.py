"""pytest-benchmark suite: each op of the contract, numpy vs rust (vs
PyTorch where it is installed), at the sizes of one GPT-2-small layer.

    pytest benches/bench_ops.py --benchmark-group-by=param:case

``python -m ferroformer bench`` prints the same cases as one table with
ratios; BENCHMARKS.md keeps its latest output.
"""

from __future__ import annotations

import numpy as np
import pytest

import ferroformer as ff
from ferroformer.bench import CASES

BACKENDS = [b for b in ff.available_backends() if b in ("numpy", "rust")]
IDS = [f"{c.name} {c.size}" for c in CASES]


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    return {i: case.make(rng) for i, case in zip(IDS, CASES)}


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_op(benchmark, inputs, case, name):
    ops = ff.backend(name)
    benchmark.group = f"{case.name} {case.size}"
    benchmark(case.run, ops, inputs[f"{case.name} {case.size}"])


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.torch], ids=[i for c, i in zip(CASES, IDS) if c.torch]
)
def test_op_torch(benchmark, inputs, case):
    torch = pytest.importorskip("torch")
    data = inputs[f"{case.name} {case.size}"]
    benchmark.group = f"{case.name} {case.size}"

    def run():
        return case.torch(torch, {k: torch.from_numpy(v) for k, v in data.items()})

    benchmark(run)
