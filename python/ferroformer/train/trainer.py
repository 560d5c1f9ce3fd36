"""``Trainer``: the training loop (accumulation, clipping, schedule), a tqdm
progress bar with loss and tokens/s, periodic evaluation, and checkpoints from
which a run resumes to exactly the losses of an uninterrupted one.

    trainer = Trainer(model, AdamW(model, lr=1e-3), task.lm_batch_fn(64), seed=0,
                      schedule=LRSchedule(1e-3, 100, 2000), grad_clip=1.0,
                      eval_fn=lambda m: {"acc": task.evaluate_lm(m, 500)}, eval_every=500,
                      checkpoint_path="run/ckpt.safetensors", checkpoint_every=500)
    trainer.fit(2000)          # trainer.history: [(step, loss)], trainer.evals: [(step, {...})]
    trainer.resume("run/ckpt.safetensors"); trainer.fit(2000)   # continues from the saved step

``batch_fn(rng)`` returns a dict: the model's keyword arguments plus
``"targets"`` (ignored positions = the loss's ignore_index). Every random draw
comes from the trainer's generator (batches) or the model's dropout generators,
and all of them are saved in checkpoints.
"""

from __future__ import annotations

import time
from typing import Callable, Dict, Optional

import numpy as np

from .. import checkpoint as ckpt
from .losses import CrossEntropyLoss
from .optim import clip_grad_norm


class Trainer:
    def __init__(self, model, optimizer, batch_fn: Callable, *, loss=None, schedule=None,
                 grad_clip: Optional[float] = None, accum_steps: int = 1,
                 eval_fn: Optional[Callable] = None, eval_every: int = 0,
                 checkpoint_path=None, checkpoint_every: int = 0, seed=None, progress: bool = True):
        if accum_steps < 1:
            raise ValueError(f"Trainer: accum_steps must be >= 1, got {accum_steps}")
        self.model, self.optimizer, self.batch_fn = model, optimizer, batch_fn
        self.loss = loss or CrossEntropyLoss()
        self.loss.ops = model.ops
        self.schedule, self.grad_clip, self.accum_steps = schedule, grad_clip, accum_steps
        self.eval_fn, self.eval_every = eval_fn, eval_every
        self.checkpoint_path, self.checkpoint_every = checkpoint_path, checkpoint_every
        self.progress = progress
        self.rng = np.random.default_rng(seed)
        self.step = 0
        self.history = []
        self.evals = []

    def train_step(self) -> Dict[str, float]:
        """One optimizer step over accum_steps micro-batches -> {"loss", "tokens", "grad_norm"}."""
        model, loss_fn = self.model, self.loss
        model.train()
        total, tokens = 0.0, 0
        for _ in range(self.accum_steps):
            batch = dict(self.batch_fn(self.rng))
            targets = batch.pop("targets")
            logits = model(**batch)
            total += loss_fn(logits, targets) / self.accum_steps
            model.backward(loss_fn.backward(grad=1.0 / self.accum_steps))
            tokens += int(targets.size)
        grad_norm = clip_grad_norm(model.parameters(), self.grad_clip) if self.grad_clip else float("nan")
        self.step += 1
        if self.schedule is not None:
            self.optimizer.lr = self.schedule(self.step)
        self.optimizer.step()
        model.zero_grad()
        self.history.append((self.step, total))
        return {"loss": total, "tokens": tokens, "grad_norm": grad_norm}

    def evaluate(self) -> dict:
        self.model.eval()
        try:
            result = self.eval_fn(self.model)
        finally:
            self.model.train()
        self.evals.append((self.step, result))
        return result

    def fit(self, max_steps: int):
        """Trains until ``self.step == max_steps``; returns ``self.history``."""
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=max_steps, initial=self.step, desc="train", dynamic_ncols=True)
        try:
            while self.step < max_steps:
                t0 = time.perf_counter()
                out = self.train_step()
                dt = time.perf_counter() - t0
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{out['loss']:.4f}", tok_s=f"{out['tokens'] / dt:,.0f}")
                if self.eval_fn is not None and self.eval_every and self.step % self.eval_every == 0:
                    result = self.evaluate()
                    if bar is not None:
                        bar.write(f"step {self.step}: {result}")
                if self.checkpoint_path and self.checkpoint_every and self.step % self.checkpoint_every == 0:
                    self.save(self.checkpoint_path)
        finally:
            if bar is not None:
                bar.close()
        return self.history

    def checkpoint_extra(self) -> dict:
        """JSON-able metadata stored with each checkpoint (a subclass may add to it)."""
        return {"schedule": None if self.schedule is None else self.schedule.config}

    def save(self, path) -> None:
        ckpt.save_checkpoint(path, self.model, self.optimizer, step=self.step,
                             rng_states={"trainer": self.rng.bit_generator.state},
                             extra=self.checkpoint_extra())

    def resume(self, path) -> None:
        """Loads model, optimizer, step and generator states saved by ``save``."""
        c = ckpt.load_checkpoint(path, self.model, self.optimizer)
        if "trainer" not in c.rng_states:
            raise ValueError(f"{path}: holds no trainer generator state")
        self.rng.bit_generator.state = c.rng_states["trainer"]
        self.step = c.step
