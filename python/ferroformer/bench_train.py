"""Training throughput: tokens/s of one full step (forward, loss, backward,
AdamW) of a GPT with 6 layers, d_model 384, 6 heads, T = 256, B = 8,
vocab 256, on every backend asked for, with PyTorch eager as a peer when it
is installed (never required). Shared by ``python -m ferroformer bench`` and
benches/bench_train.py.

    rates = run_train_table(["numpy", "rust"])       # {name: tokens/s}
    print(format_train_table(rates))
"""

from __future__ import annotations

import time
from typing import Dict, List

import numpy as np

N_LAYERS, D_MODEL, N_HEADS, T, B, VOCAB = 6, 384, 6, 256, 8, 256
TOKENS = B * T
SIZE = f"GPT {N_LAYERS}L d{D_MODEL} {N_HEADS}h, T={T}, B={B}, vocab {VOCAB}, AdamW"


def batch(seed=0):
    ids = np.random.default_rng(seed).integers(0, VOCAB, (B, T + 1))
    return ids[:, :-1], ids[:, 1:]


def ferroformer_step(backend_name):
    """A closure running one training step on ``backend_name``."""
    from . import backend
    from .models import GPT
    from .train import AdamW, CrossEntropyLoss

    ops = backend(backend_name)
    model = GPT(
        VOCAB,
        max_seq_len=T,
        d_model=D_MODEL,
        n_heads=N_HEADS,
        n_layers=N_LAYERS,
        backend=ops,
        rng=0,
    )
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
        return loss.item()

    return step


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def make_step(name):
    return torch_step() if name == "torch" else ferroformer_step(name)


def run_train_table(names: List[str], rounds: int = 3, progress=None) -> Dict[str, float]:
    """Mean tokens/s over ``rounds`` steps (after one warm-up step) for each name
    (a backend, or "torch"), measured one after the other in this process."""
    rates = {}
    for name in names:
        step = make_step(name)
        step()
        t0 = time.perf_counter()
        for _ in range(rounds):
            step()
        rates[name] = TOKENS * rounds / (time.perf_counter() - t0)
        if progress is not None:
            progress(name, rates[name])
    return rates


def format_train_table(rates: Dict[str, float]) -> str:
    """A Markdown table of tokens/s with each fast backend's ratio to numpy and torch."""
    lines = ["| backend | tokens/s | vs numpy | vs torch |", "|---|---|---|---|"]
    for name, rate in rates.items():
        cells = [name, f"{rate:,.0f}"]
        for peer in ("numpy", "torch"):
            ok = peer in rates and name not in ("numpy", "torch")
            cells.append(f"{rate / rates[peer]:.2f}x" if ok else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
