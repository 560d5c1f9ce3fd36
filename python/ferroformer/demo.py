"""The README's main job: train a small GPT on multi-digit addition (built-in
data, nothing downloaded), report held-out exact match and training
tokens/s, then generate answers to a few sums and report decode tokens/s."""

from __future__ import annotations

import time

import numpy as np

from .data.tasks import SEP, AdditionTask
from .models import GPT
from .models.greedy import greedy_complete
from .train import AdamW, LRSchedule, Trainer


def run_demo(
    *,
    backend=None,
    n_digits: int = 3,
    steps: int = 1800,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    from . import backend as get_backend

    ops = get_backend(backend)
    task = AdditionTask(n_digits=n_digits)
    model = GPT(
        task.vocab_size,
        max_seq_len=3 * n_digits + 4,
        d_model=64,
        n_heads=4,
        n_layers=2,
        backend=ops,
        rng=seed,
    )
    n_params = sum(int(p.data.size) for p in model.parameters())
    print(
        f"ferroformer demo: GPT ({n_params:,} parameters, 2 layers, d_model 64) learns "
        f"{n_digits}-digit addition on the {ops.name} backend",
        flush=True,
    )
    trainer = Trainer(
        model,
        AdamW(model, lr=1e-2, betas=(0.9, 0.98), weight_decay=0.1),
        task.lm_batch_fn(batch_size),
        seed=seed,
        grad_clip=1.0,
        progress=progress,
        schedule=LRSchedule(1e-2, min(100, steps), steps, "cosine", 5e-4),
    )
    t0 = time.perf_counter()
    trainer.fit(steps)
    train_s = time.perf_counter() - t0
    tokens = steps * batch_size * (3 * n_digits + 4)
    test = task.test_examples(1000, np.random.default_rng(seed + 1))
    acc = task.evaluate_lm(model, test)
    print(
        f"trained {steps} steps in {train_s:.1f} s: {tokens / train_s:,.0f} tokens/s; "
        f"final loss {trainer.history[-1][1]:.4f}"
    )
    print(f"exact match on 1000 held-out sums (never seen in training): {acc:.1%}")

    # generation: greedy answers for a handful of held-out sums, timed
    show = test[:8]
    prompts = np.array([[1, *x, SEP] for x, _ in show], np.int64)
    n_new = n_digits + 2
    t0 = time.perf_counter()
    out = greedy_complete(model, ops.asarray(prompts), n_new=n_new)
    gen_s = time.perf_counter() - t0
    out = np.asarray(out)
    for (x, y), row in zip(show, out):
        a, b = _operands(x, n_digits)
        got = _answer(row[: n_digits + 1], task)
        mark = "ok" if list(row[: len(y)]) == list(y) else "WRONG"
        print(f"  {a:>{n_digits}} + {b:>{n_digits}} = {got:<{n_digits + 1}} {mark}")
    print(f"generated {out.size} tokens in {gen_s * 1e3:.0f} ms: {out.size / gen_s:,.0f} tokens/s")
    return {
        "accuracy": acc,
        "train_tokens_per_s": tokens / train_s,
        "gen_tokens_per_s": out.size / gen_s,
    }


def _operands(x, n):
    digits = [t - 4 for t in x]
    return int("".join(map(str, digits[:n]))), int("".join(map(str, digits[n + 1 :])))


def _answer(tokens, task):
    digits = [int(t) - 4 for t in tokens]
    if any(d < 0 or d > 9 for d in digits):
        return "?"
    if task.reverse_answer:
        digits = digits[::-1]
    return str(int("".join(map(str, digits))))
