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
import time

import numpy as np
import pytest

import ferroformer as ff
from ferroformer.models import GPT
from ferroformer.train import AdamW, CrossEntropyLoss

N_LAYERS, D_MODEL, N_HEADS, T, B, VOCAB = 6, 384, 6, 256, 8, 256
TOKENS = B * T


def batch(seed=0):
    ids = np.random.default_rng(seed).integers(0, VOCAB, (B, T + 1))
    return ids[:, :-1], ids[:, 1:]


def ferroformer_step(backend_name):
    """A closure running one training step on ``backend_name``."""
    ops = ff.backend(backend_name)
    model = GPT(VOCAB, max_seq_len=T, d_model=D_MODEL, n_heads=N_HEADS, n_layers=N_LAYERS,
                backend=ops, rng=0)
    opt = AdamW(model, lr=3e-4, weight_decay=0.1)
    loss_fn = CrossEntropyLoss(ops=ops)
    x, y = (ops.asarray(a) for a in batch())

    def step():
        loss = loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        opt.step()
        model.zero_grad()
        return loss
    return step


def torch_step():
    """The same model and step in PyTorch eager (GPT-2 layout, fused SDPA attention)."""
    import torch
    import torch.nn as tnn
    import torch.nn.functional as F

    class Block(tnn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = tnn.LayerNorm(D_MODEL), tnn.LayerNorm(D_MODEL)
            self.qkv, self.proj = tnn.Linear(D_MODEL, 3 * D_MODEL), tnn.Linear(D_MODEL, D_MODEL)
            self.fc1, self.fc2 = tnn.Linear(D_MODEL, 4 * D_MODEL), tnn.Linear(4 * D_MODEL, D_MODEL)

        def forward(self, x):
            q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, N_HEADS, -1).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(a.transpose(1, 2).reshape(B, T, D_MODEL))
            return x + self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate="tanh"))

    class TorchGPT(tnn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = tnn.Embedding(VOCAB, D_MODEL), tnn.Embedding(T, D_MODEL)
            self.blocks = tnn.ModuleList(Block() for _ in range(N_LAYERS))
            self.ln_f = tnn.LayerNorm(D_MODEL)

        def forward(self, ids):
            x = self.wte(ids) + self.wpe(torch.arange(T))
            for b in self.blocks:
                x = b(x)
            return self.ln_f(x) @ self.wte.weight.T

    torch.manual_seed(0)
    model = TorchGPT()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    x, y = (torch.from_numpy(a) for a in batch())

    def step():
        loss = F.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss)
    return step


def _peers():
    out = list(ff.available_backends())
    try:
        import torch  # noqa: F401
        out.append("torch")
    except ImportError:
        pass
    return out


def make_step(name):
    return torch_step() if name == "torch" else ferroformer_step(name)


@pytest.mark.parametrize("name", _peers())
def test_train_step_throughput(benchmark, name):
    step = make_step(name)
    step()                                                      # warm-up (allocations, pools)
    benchmark.extra_info["tokens_per_step"] = TOKENS
    benchmark.pedantic(step, rounds=3, iterations=1)
    benchmark.extra_info["tokens_per_s"] = TOKENS / benchmark.stats.stats.mean


def main(rounds: int = 3):
    rates = {}
    for name in _peers():
        step = make_step(name)
        step()
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        rates[name] = TOKENS / (sum(times) / len(times))
        print(f"{name:6s} {rates[name]:9.0f} tokens/s  (mean of {rounds} steps, {min(times):.2f}-{max(times):.2f} s)",
              flush=True)
    if "rust" in rates:
        for peer in ("numpy", "torch"):
            if peer in rates:
                print(f"rust / {peer}: {rates['rust'] / rates[peer]:.2f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
