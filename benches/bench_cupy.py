"""pytest-benchmark suite for the cupy backend, GPU only (skips elsewhere):
each fused op at GPT-2-small training sizes (B=8, T=1024, C=768, 12 heads,
vocabulary 50257), its achieved bandwidth against the GPU's measured
device-to-device copy bandwidth, beside the same op in PyTorch CUDA when
torch imports (one process, one run).

    pytest benches/bench_cupy.py --benchmark-group-by=param:case --benchmark-columns=mean

pytest-benchmark times CALLS calls and a synchronize (wall clock: launch
overhead included). extra_info holds the GPU's own time: a spin kernel holds
the GPU while the CALLS calls are queued behind it, and CUDA events time
them, so Python's launch overhead is hidden (except for ops that read a value
back to the host, such as the id and target checks, which wait each call).
Bytes are the op's compulsory traffic: each input read once, each output
written once; bandwidth_vs_copy is that rate over the copy's rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import pytest

pytest.importorskip("pytest_benchmark")
cp = pytest.importorskip("cupy")
try:
    _GPUS = cp.cuda.runtime.getDeviceCount()
except Exception:  # no driver, no device
    _GPUS = 0
if not _GPUS:
    pytest.skip("the cupy benchmarks need a GPU", allow_module_level=True)

import ferroformer as ff  # noqa: E402

B, T, C, HEADS, VOCAB = 8, 1024, 768, 12, 50257
ROWS, HIDDEN, HEAD_DIM = B * T, 4 * C, C // HEADS
CALLS = 20
SPIN_SECONDS = 0.05
F32 = 4

_SPIN = cp.RawKernel(
    r"""
extern "C" __global__ void spin(long long cycles) {
    const long long start = clock64();
    while (clock64() - start < cycles) { }
}
""",
    "spin",
)


def gpu_seconds(fn, calls=CALLS):
    """GPU time of one call of fn, its launches queued behind a spin kernel."""
    fn()  # warm up: compile, allocate
    cp.cuda.Device().synchronize()
    clock_hz = cp.cuda.Device().attributes["ClockRate"] * 1000
    start, end = cp.cuda.Event(), cp.cuda.Event()
    _SPIN((1,), (1,), (np.int64(SPIN_SECONDS * clock_hz),))
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return cp.cuda.get_elapsed_time(start, end) / 1000 / calls


def copy_bandwidth(nbytes=1 << 30):
    """Bytes per second of a device-to-device copy (read + write counted)."""
    src = cp.ones(nbytes // F32, cp.float32)
    dst = cp.empty_like(src)
    seconds = gpu_seconds(lambda: dst.data.copy_from_device_async(src.data, nbytes), calls=10)
    return 2 * nbytes / seconds


@pytest.fixture(scope="module")
def copy_rate():
    return copy_bandwidth()


@pytest.fixture(scope="module")
def ops():
    return ff.backend("cupy")


@dataclass
class Case:
    name: str
    make: Callable  # make(rng) -> dict of cupy arrays
    run: Callable  # run(ops, t)
    bytes: Callable  # bytes(t): compulsory traffic of one call
    torch: Optional[Callable] = None  # torch_run(torch, t) on the same (shared) memory


def _normal(rng, *shape):
    return cp.asarray(rng.standard_normal(shape, np.float32))


def _rows(rng, cols=C):
    return {"x": _normal(rng, ROWS, cols), "dy": _normal(rng, ROWS, cols)}


def _scores(rng):
    x = _normal(rng, B, HEADS, T, T)
    return {"x": x, "dy": _normal(rng, B, HEADS, T, T), "y": ff.backend("cupy").softmax_forward(x)}


def _norm(rng):
    t = _rows(rng)
    t["gamma"], t["beta"] = _normal(rng, C), _normal(rng, C)
    _, t["mean"], t["rstd"] = ff.backend("cupy").layernorm_forward(t["x"], t["gamma"], t["beta"])
    return t


def _ce(rng):
    return {"z": _normal(rng, ROWS, VOCAB), "t": cp.asarray(rng.integers(0, VOCAB, ROWS))}


def _embedding(rng):
    return {
        "w": _normal(rng, VOCAB, C),
        "ids": cp.asarray(rng.integers(0, VOCAB, (B, T))),
        "dy": _normal(rng, B, T, C),
    }


def _rope(rng):
    theta = np.arange(T)[:, None] * 10000.0 ** (-np.arange(HEAD_DIM // 2) / (HEAD_DIM // 2))
    return {
        "x": _normal(rng, B, HEADS, T, HEAD_DIM),
        "cos": cp.asarray(np.cos(theta), cp.float32),
        "sin": cp.asarray(np.sin(theta), cp.float32),
    }


def _adamw(rng, n=124_000_000):
    return {k: _normal(rng, n) for k in ("p", "g", "m")} | {"v": cp.abs(_normal(rng, n))}


def _n(t, key="x"):
    return t[key].size * F32


def _torch_adamw(torch, t):
    if "opt" not in t:
        p = torch.nn.Parameter(torch.as_tensor(t["p"], device="cuda"))
        p.grad = torch.as_tensor(t["g"], device="cuda")
        t["opt"] = torch.optim.AdamW([p], lr=1e-3, weight_decay=0.1, fused=True)
    t["opt"].step()


def _aten(torch):
    return torch.ops.aten


CASES = [
    Case(
        "softmax fwd (B,H,T,T)",
        _scores,
        lambda o, t: o.softmax_forward(t["x"]),
        lambda t: 2 * _n(t),
        lambda torch, t: torch.softmax(t["x"], -1),
    ),
    Case(
        "softmax fwd causal, scale",
        _scores,
        lambda o, t: o.softmax_forward(t["x"], scale=0.125, causal=True),
        lambda t: 2 * _n(t),
    ),
    Case(
        "softmax bwd",
        _scores,
        lambda o, t: o.softmax_backward(t["dy"], t["y"]),
        lambda t: 3 * _n(t),
        lambda torch, t: _aten(torch)._softmax_backward_data(t["dy"], t["y"], -1, torch.float32),
    ),
    Case(
        "layernorm fwd",
        _norm,
        lambda o, t: o.layernorm_forward(t["x"], t["gamma"], t["beta"]),
        lambda t: 2 * _n(t),
        lambda torch, t: _aten(torch).native_layer_norm(t["x"], [C], t["gamma"], t["beta"], 1e-5),
    ),
    Case(
        "layernorm bwd",
        _norm,
        lambda o, t: o.layernorm_backward(t["dy"], t["x"], t["gamma"], t["mean"], t["rstd"]),
        lambda t: 3 * _n(t),
        lambda torch, t: _aten(torch).native_layer_norm_backward(
            t["dy"],
            t["x"],
            [C],
            t["mean"][:, None],
            t["rstd"][:, None],
            t["gamma"],
            t["beta"],
            [True, True, True],
        ),
    ),
    Case(
        "rmsnorm fwd",
        _norm,
        lambda o, t: o.rmsnorm_forward(t["x"], t["gamma"]),
        lambda t: 2 * _n(t),
    ),
    Case(
        "rmsnorm bwd",
        _norm,
        lambda o, t: o.rmsnorm_backward(t["dy"], t["x"], t["gamma"], t["rstd"]),
        lambda t: 3 * _n(t),
    ),
    Case(
        "gelu fwd (tanh)",
        lambda rng: _rows(rng, HIDDEN),
        lambda o, t: o.gelu_forward(t["x"]),
        lambda t: 2 * _n(t),
        lambda torch, t: torch.nn.functional.gelu(t["x"], approximate="tanh"),
    ),
    Case(
        "gelu bwd (tanh)",
        lambda rng: _rows(rng, HIDDEN),
        lambda o, t: o.gelu_backward(t["dy"], t["x"]),
        lambda t: 3 * _n(t),
        lambda torch, t: _aten(torch).gelu_backward(t["dy"], t["x"], approximate="tanh"),
    ),
    Case(
        "swiglu fwd",
        lambda rng: _rows(rng, HIDDEN),
        lambda o, t: o.swiglu_forward(t["x"], t["dy"]),
        lambda t: 3 * _n(t),
        lambda torch, t: torch.nn.functional.silu(t["x"]) * t["dy"],
    ),
    Case(
        "swiglu bwd",
        lambda rng: _rows(rng, HIDDEN),
        lambda o, t: o.swiglu_backward(t["dy"], t["x"], t["dy"]),
        lambda t: 5 * _n(t),
    ),
    Case(
        "cross-entropy fwd",
        _ce,
        lambda o, t: o.cross_entropy_forward(t["z"], t["t"]),
        lambda t: _n(t, "z"),
        lambda torch, t: torch.nn.functional.cross_entropy(t["z"], t["t"]),
    ),
    Case(
        "cross-entropy bwd",
        _ce,
        lambda o, t: o.cross_entropy_backward(
            t["z"],
            t["t"],
            t.setdefault("lse", ff.backend("cupy").cross_entropy_forward(t["z"], t["t"])[1]),
        ),
        lambda t: 2 * _n(t, "z"),
    ),
    Case(
        "embedding fwd",
        _embedding,
        lambda o, t: o.embedding_forward(t["w"], t["ids"]),
        lambda t: 2 * _n(t, "dy"),
        lambda torch, t: torch.nn.functional.embedding(t["ids"], t["w"]),
    ),
    Case(
        "embedding bwd",
        _embedding,
        lambda o, t: o.embedding_backward(t["dy"], t["ids"], VOCAB),
        lambda t: _n(t, "dy") + _n(t, "w"),
        lambda torch, t: _aten(torch).embedding_dense_backward(t["dy"], t["ids"], VOCAB, -1, False),
    ),
    Case(
        "rope fwd",
        _rope,
        lambda o, t: o.rope_forward(t["x"], t["cos"], t["sin"]),
        lambda t: 2 * _n(t),
    ),
    Case(
        "adamw step (124M)",
        _adamw,
        lambda o, t: o.adamw_step(
            t["p"], t["g"], t["m"], t["v"], lr=1e-3, weight_decay=0.1, step=3
        ),
        lambda t: 7 * _n(t, "p"),
        _torch_adamw,
    ),
]
IDS = [c.name for c in CASES]


@pytest.fixture(scope="module")
def inputs():
    return {}


def _inputs(cache, case):
    if case.name not in cache:
        cache.clear()  # one case's buffers at a time: the large ones do not all fit together
        cp.get_default_memory_pool().free_all_blocks()
        cache[case.name] = case.make(np.random.default_rng(0))
    return cache[case.name]


def _record(benchmark, case, fn, t, copy_rate, peer):
    seconds = gpu_seconds(fn)
    rate = case.bytes(t) / seconds
    benchmark.group = case.name
    benchmark.extra_info.update(
        peer=peer,
        gpu_us=seconds * 1e6,
        gbytes_per_s=rate / 1e9,
        bandwidth_vs_copy=rate / copy_rate,
        copy_gbytes_per_s=copy_rate / 1e9,
    )

    def burst():
        for _ in range(CALLS):
            fn()
        cp.cuda.Device().synchronize()

    benchmark.pedantic(burst, rounds=5, iterations=1)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cupy(benchmark, ops, inputs, copy_rate, case):
    t = _inputs(inputs, case)
    _record(benchmark, case, lambda: case.run(ops, t), t, copy_rate, "ferroformer cupy")


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.torch], ids=[c.name for c in CASES if c.torch]
)
def test_torch(benchmark, inputs, copy_rate, case):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    t = _inputs(inputs, case)
    shared = {
        k: torch.as_tensor(v, device="cuda") if isinstance(v, cp.ndarray) else v
        for k, v in t.items()
    }
    _record(benchmark, case, lambda: case.torch(torch, shared), t, copy_rate, "torch cuda")
