"""Issue 7's race against PyTorch, GPU only (skips elsewhere), each case
beside PyTorch CUDA in the same process when torch imports:

  - flash attention forward + backward: B=8, H=12, T=1024 and 4096, D=64,
    causal, bfloat16, against torch.nn.functional.scaled_dot_product_attention
    (target: at least 0.8x its speed);
  - decode attention: one query row against a KV cache (the split-K kernels),
    B=1, H=12, D=64, bfloat16, against the same sdpa call;
  - a GPT-2-small training step (12 layers, d_model 768, B=8, T=1024,
    bfloat16 mixed precision with float32 master weights, AdamW) against
    PyTorch eager under autocast (target: no more than 1.3x its step time);
  - greedy decode tokens/s at batch 1 with GPT-2 small.
The model cases skip until ferroformer.models lands.

    pytest benches/bench_gpu_training.py --benchmark-columns=mean

Kernel cases report the GPU's own time (CUDA events around calls queued
behind a spin kernel, as bench_cupy.py does); model cases report wall-clock
time per step or per token, the host's launch overhead included, for both
libraries. At the end a markdown table for BENCHMARKS.md goes to the
terminal: device, sizes, times, and ferroformer's speed over PyTorch's.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from bench_cupy import cp, gpu_seconds  # skips this module where the cupy benchmarks cannot run

import ferroformer as ff
from ferroformer.backends.cupy_backend import bfloat16_dtype

B, H, D = 8, 12, 64
GPT2 = dict(vocab_size=50257, max_seq_len=1024, d_model=768, n_heads=12, n_layers=12)
GPT2_BATCH, GPT2_T = 8, 1024
STEPS = 10
RESULTS = []  # rows of the summary table


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


@pytest.fixture(scope="module")
def ops():
    if bfloat16_dtype() is None:
        pytest.skip("bfloat16 needs ml_dtypes")
    return ff.backend("cupy").with_dtype("bfloat16")


@pytest.fixture(scope="module", autouse=True)
def summary(request):
    yield
    if not RESULTS:
        return
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    torch = _torch()
    lines = [
        f"\n### GPU training ({cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}, "
        f"CuPy {cp.__version__}, torch {torch.__version__ if torch else 'absent'}, "
        f"{time.strftime('%Y-%m-%d')})",
        "",
        "| case | ferroformer | PyTorch | speed vs PyTorch | target |",
        "| --- | --- | --- | --- | --- |",
    ]
    for case, ours, theirs, unit, target in RESULTS:
        ratio = f"{theirs / ours:.2f}x" if theirs else "-"
        theirs_text = f"{theirs:.3f} {unit}" if theirs else "-"
        lines.append(f"| {case} | {ours:.3f} {unit} | {theirs_text} | {ratio} | {target} |")
    for line in lines:
        reporter.write_line(line)


def _record(benchmark, case, ours, theirs, unit, target, **extra):
    """One row of the summary: the time of each library (lower is better;
    theirs is None without torch); speed vs PyTorch is theirs / ours."""
    RESULTS.append((case, ours, theirs, unit, target))
    benchmark.extra_info.update(
        ferroformer=ours,
        torch=theirs,
        unit=unit,
        speed_vs_torch=(theirs / ours) if theirs else None,
        **extra,
    )


def _normal(rng, *shape):
    return rng.standard_normal(shape, np.float32)


# -- attention ---------------------------------------------------------------------------


def _attention_flops(t):
    """Forward + backward FLOPs of causal attention (forward 2 products, backward 5;
    the causal mask halves both): 3.5 x 4 B H T^2 D / 2."""
    return 3.5 * 4 * B * H * t * t * D / 2


@pytest.mark.parametrize("t", [1024, 4096])
def test_attention_forward_backward(benchmark, ops, t):
    rng = np.random.default_rng(0)
    host = [_normal(rng, B, H, t, D) for _ in range(4)]
    q, k, v, do = (cp.asarray(x).astype(ops.compute_dtype) for x in host)

    def ours():
        o, lse = ops.attention_forward(q, k, v, causal=True)
        ops.attention_backward(do, q, k, v, o, lse, causal=True)

    seconds = gpu_seconds(ours)
    theirs = None
    torch = _torch()
    if torch is not None:
        tq, tk, tv = (torch.from_numpy(x).cuda().bfloat16().requires_grad_() for x in host[:3])
        tdo = torch.from_numpy(host[3]).cuda().bfloat16()
        sdpa = torch.nn.functional.scaled_dot_product_attention

        def torch_step():
            for x in (tq, tk, tv):
                x.grad = None
            sdpa(tq, tk, tv, is_causal=True).backward(tdo)

        theirs = gpu_seconds(torch_step)
        # the two libraries agree (the accuracy is tested in tests/test_cupy_attention.py)
        o, _ = ops.attention_forward(q, k, v, causal=True)
        ref = sdpa(tq, tk, tv, is_causal=True).float()
        got = torch.as_tensor(o.astype(np.float32), device="cuda")
        assert float((got - ref).abs().max()) < 3e-2
    _record(
        benchmark,
        f"attention fwd+bwd B={B} H={H} T={t} D={D} causal bf16",
        seconds * 1e3,
        theirs and theirs * 1e3,
        "ms",
        ">= 0.8x",
        tflops=_attention_flops(t) / seconds / 1e12,
        torch_tflops=theirs and _attention_flops(t) / theirs / 1e12,
    )
    benchmark.pedantic(lambda: (ours(), cp.cuda.Device().synchronize()), rounds=3, iterations=1)


@pytest.mark.parametrize("t", [1024, 4096, 32768])
def test_decode_attention(benchmark, ops, t):
    """One query row (B=1) against a KV cache of t keys."""
    rng = np.random.default_rng(0)
    host = [_normal(rng, 1, H, 1, D), _normal(rng, 1, H, t, D), _normal(rng, 1, H, t, D)]
    q, k, v = (cp.asarray(x).astype(ops.compute_dtype) for x in host)
    seconds = gpu_seconds(lambda: ops.attention_forward(q, k, v, causal=True))
    theirs = None
    torch = _torch()
    if torch is not None:
        tq, tk, tv = (torch.from_numpy(x).cuda().bfloat16() for x in host)
        sdpa = torch.nn.functional.scaled_dot_product_attention
        # one query row sees every key (torch aligns is_causal top-left, so leave it off)
        theirs = gpu_seconds(lambda: sdpa(tq, tk, tv))
    _record(
        benchmark,
        f"decode attention B=1 H={H} T={t} D={D} bf16",
        seconds * 1e6,
        theirs and theirs * 1e6,
        "us",
        "-",
        gbytes_per_s=2 * t * H * D * 2 / seconds / 1e9,
    )
    benchmark.pedantic(
        lambda: (ops.attention_forward(q, k, v, causal=True), cp.cuda.Device().synchronize()),
        rounds=3,
        iterations=10,
    )


# -- GPT-2 small -----------------------------------------------------------------------------


def _torch_gpt2(torch):
    """GPT-2 small in PyTorch eager: the same layout as ferroformer.models.GPT."""
    nn, F = torch.nn, torch.nn.functional
    c, heads = GPT2["d_model"], GPT2["n_heads"]

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(c), nn.LayerNorm(c)
            self.qkv, self.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
            self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = (
                z.view(b, t, heads, c // heads).transpose(1, 2)
                for z in self.qkv(self.ln1(x)).split(c, dim=2)
            )
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
            return x + self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(GPT2["vocab_size"], c)
            self.wpe = nn.Embedding(GPT2["max_seq_len"], c)
            self.blocks = nn.ModuleList(Block() for _ in range(GPT2["n_layers"]))
            self.ln_f = nn.LayerNorm(c)

        def forward(self, ids):
            x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1], device=ids.device))
            for block in self.blocks:
                x = block(x)
            return self.ln_f(x) @ self.wte.weight.T

    return GPT().cuda()


def _models():
    return pytest.importorskip("ferroformer.models", reason="ferroformer.models has not landed yet")


def _wall_seconds(step, n):
    for _ in range(3):
        step()
    cp.cuda.Device().synchronize()
    start = time.perf_counter()
    for _ in range(n):
        step()
    cp.cuda.Device().synchronize()
    return (time.perf_counter() - start) / n


def test_gpt2_small_training_step(benchmark, ops):
    models = _models()
    from ferroformer.train import AdamW, CrossEntropyLoss

    rng = np.random.default_rng(0)
    window = rng.integers(0, GPT2["vocab_size"], (GPT2_BATCH, GPT2_T + 1))
    model = models.GPT(**GPT2, backend=ops, rng=0)
    opt, loss_fn = AdamW(model, lr=6e-4, weight_decay=0.1), CrossEntropyLoss(ops=ops)
    ids, targets = ops.asarray(window[:, :-1]), ops.asarray(window[:, 1:])

    def ours():
        loss_fn(model(ids), targets)
        model.backward(loss_fn.backward())
        opt.step()
        model.zero_grad()

    seconds = _wall_seconds(ours, STEPS)
    theirs = None
    torch = _torch()
    if torch is not None:
        net = _torch_gpt2(torch)
        topt = torch.optim.AdamW(net.parameters(), lr=6e-4, weight_decay=0.1)
        tids = torch.as_tensor(window[:, :-1], device="cuda")
        ttargets = torch.as_tensor(window[:, 1:], device="cuda")

        def torch_step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = net(tids)
                loss = torch.nn.functional.cross_entropy(
                    logits.view(-1, logits.shape[-1]), ttargets.view(-1)
                )
            loss.backward()
            topt.step()
            topt.zero_grad(set_to_none=True)
            loss.item()

        theirs = _wall_seconds(torch_step, STEPS)
        del net, topt
    tokens = GPT2_BATCH * GPT2_T
    _record(
        benchmark,
        f"GPT-2 small train step B={GPT2_BATCH} T={GPT2_T} bf16 AdamW",
        seconds * 1e3,
        theirs and theirs * 1e3,
        "ms",
        "<= 1.3x PyTorch's time",
        tokens_per_s=tokens / seconds,
        torch_tokens_per_s=theirs and tokens / theirs,
    )
    benchmark.pedantic(ours, rounds=3, iterations=1)


def test_gpt2_small_greedy_decode(benchmark, ops):
    """Tokens per second of greedy decoding at batch 1 from a 16-token prompt
    (as the model decodes: models/greedy.py recomputes the prefix until the
    KV cache lands; PyTorch does the same here, for a like-for-like rate)."""
    models = _models()
    from ferroformer.models.greedy import greedy_complete

    rng = np.random.default_rng(0)
    prompt = rng.integers(0, GPT2["vocab_size"], (1, 16))
    new_tokens = 64
    model = models.GPT(**GPT2, backend=ops, rng=0).eval()
    ids = ops.asarray(prompt)
    seconds = _wall_seconds(lambda: greedy_complete(model, ids, n_new=new_tokens), 2) / new_tokens
    theirs = None
    torch = _torch()
    if torch is not None:
        net = _torch_gpt2(torch).eval()
        tids = torch.as_tensor(prompt, device="cuda")

        @torch.no_grad()
        def torch_decode():
            out = tids
            with torch.autocast("cuda", dtype=torch.bfloat16):
                for _ in range(new_tokens):
                    out = torch.cat([out, net(out)[:, -1].argmax(-1, keepdim=True)], dim=1)
            return out

        theirs = _wall_seconds(torch_decode, 2) / new_tokens
    _record(
        benchmark,
        "GPT-2 small greedy decode, batch 1, no KV cache (tokens/s = 1000 / ms)",
        seconds * 1e3,
        theirs and theirs * 1e3,
        "ms/token",
        "-",
        tokens_per_s=1.0 / seconds,
        torch_tokens_per_s=theirs and 1.0 / theirs,
    )
    benchmark.pedantic(lambda: greedy_complete(model, ids, n_new=8), rounds=2, iterations=1)
