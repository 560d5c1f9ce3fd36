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

Settings are checked before the first step (``ValueError`` naming the one that
is wrong), and so is every batch (not empty, not longer than the model's
max_seq_len). A loss or gradient that is not finite stops the run with
``NonFiniteError`` before the optimizer applies it, so the weights stay those of
the last good step; ``save`` refuses to write non-finite weights, so the last
checkpoint on disk is always a good one.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Dict, Optional

import numpy as np

from .. import checkpoint as ckpt
from .checks import integer, real
from .losses import CrossEntropyLoss
from .optim import clip_grad_norm, grad_norm


class NonFiniteError(RuntimeError):
    """Training met a loss, gradient or weight that is inf or NaN; ``step`` is the
    step at which it happened, ``what`` one of "loss", "gradient", "weights"."""

    def __init__(self, step: int, what: str, detail: str):
        super().__init__(
            f"training stopped at step {step}: the {what} is not finite ({detail}); "
            "the weights of the last good step are kept (try a lower lr or grad_clip)"
        )
        self.step, self.what = step, what


class Trainer:
    def __init__(
        self,
        model,
        optimizer,
        batch_fn: Callable,
        *,
        loss=None,
        schedule=None,
        grad_clip: Optional[float] = None,
        accum_steps: int = 1,
        eval_fn: Optional[Callable] = None,
        eval_every: int = 0,
        checkpoint_path=None,
        checkpoint_every: int = 0,
        seed=None,
        progress: bool = True,
    ):
        self.accum_steps = integer("Trainer", "accum_steps", accum_steps, low=1)
        self.grad_clip = (
            None
            if grad_clip is None
            else real("Trainer", "grad_clip", grad_clip, low=0, low_open=True)
        )
        self.eval_every = integer("Trainer", "eval_every", eval_every, low=0)
        self.checkpoint_every = integer("Trainer", "checkpoint_every", checkpoint_every, low=0)
        if not callable(batch_fn):
            raise TypeError(f"Trainer: batch_fn must be callable, got {type(batch_fn).__name__}")
        if eval_fn is not None and not callable(eval_fn):
            raise TypeError(f"Trainer: eval_fn must be callable, got {type(eval_fn).__name__}")
        self.model, self.optimizer, self.batch_fn = model, optimizer, batch_fn
        self.loss = loss or CrossEntropyLoss()
        self.loss.ops = model.ops
        self.schedule = schedule
        self.eval_fn = eval_fn
        self.checkpoint_path = checkpoint_path
        self.progress = progress
        self.rng = np.random.default_rng(seed)
        self.step = 0
        self.history = []
        self.evals = []

    def train_step(self) -> Dict[str, float]:
        """One optimizer step over accum_steps micro-batches -> {"loss", "tokens", "grad_norm"}."""
        model, loss_fn = self.model, self.loss
        step = self.step + 1
        model.train()
        total, tokens = 0.0, 0
        for _ in range(self.accum_steps):
            batch = dict(self.batch_fn(self.rng))
            targets = self._check_batch(batch)
            logits = model(**batch)
            loss = loss_fn(logits, targets)
            if not math.isfinite(loss):
                model.zero_grad()
                raise NonFiniteError(step, "loss", f"{loss}")
            total += loss / self.accum_steps
            model.backward(loss_fn.backward(grad=1.0 / self.accum_steps))
            tokens += int(targets.size)
        params = list(model.parameters())
        norm = clip_grad_norm(params, self.grad_clip) if self.grad_clip else grad_norm(params)
        if not math.isfinite(norm):
            model.zero_grad()
            raise NonFiniteError(step, "gradient", f"global norm {norm}")
        self.step = step
        if self.schedule is not None:
            self.optimizer.lr = self.schedule(self.step)
        self.optimizer.step()
        model.zero_grad()
        self.history.append((self.step, total))
        return {"loss": total, "tokens": tokens, "grad_norm": norm}

    def _check_batch(self, batch: dict):
        """The batch's targets, after checking that it holds examples and that no
        sequence in it is longer than the model's max_seq_len."""
        if "targets" not in batch:
            raise ValueError(
                f"Trainer: batch_fn must return a dict with 'targets', got keys {sorted(batch)}"
            )
        limit = getattr(self.model, "config", {}).get("max_seq_len")
        for name, arr in batch.items():
            shape = tuple(getattr(arr, "shape", ()))
            if shape and shape[0] == 0:
                raise ValueError(
                    f"Trainer: the batch is empty ({name!r} has shape {shape}); "
                    "the batch size must be at least 1"
                )
            if limit is not None and len(shape) == 2 and shape[1] > limit:
                raise ValueError(
                    f"Trainer: batch {name!r} has sequence length {shape[1]}, longer "
                    f"than the model's max_seq_len {limit}"
                )
        return batch.pop("targets")

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
        max_steps = integer("Trainer.fit", "max_steps", max_steps, low=1)
        warmup = getattr(self.schedule, "warmup_steps", 0)
        if warmup > max_steps:
            raise ValueError(
                f"Trainer.fit: the schedule's warmup_steps {warmup} is beyond the "
                f"run's max_steps {max_steps}"
            )
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
                if (
                    self.eval_fn is not None
                    and self.eval_every
                    and self.step % self.eval_every == 0
                ):
                    result = self.evaluate()
                    if bar is not None:
                        bar.write(f"step {self.step}: {result}")
                if (
                    self.checkpoint_path
                    and self.checkpoint_every
                    and self.step % self.checkpoint_every == 0
                ):
                    self.save(self.checkpoint_path)
        finally:
            if bar is not None:
                bar.close()
        return self.history

    def checkpoint_extra(self) -> dict:
        """JSON-able metadata stored with each checkpoint (a subclass may add to it)."""
        return {"schedule": None if self.schedule is None else self.schedule.config}

    def save(self, path) -> None:
        """Writes a checkpoint; NonFiniteError, and nothing written, if a weight is not finite."""
        xp = self.model.ops.xp
        for name, p in self.model.named_parameters():
            if not bool(xp.isfinite(p.data).all()):
                raise NonFiniteError(self.step, "weights", f"{name} holds inf or NaN")
        ckpt.save_checkpoint(
            path,
            self.model,
            self.optimizer,
            step=self.step,
            rng_states={"trainer": self.rng.bit_generator.state},
            extra=self.checkpoint_extra(),
        )

    def resume(self, path) -> None:
        """Loads model, optimizer, step and generator states saved by ``save``."""
        c = ckpt.load_checkpoint(path, self.model, self.optimizer)
        if "trainer" not in c.rng_states:
            raise ValueError(f"{path}: holds no trainer generator state")
        self.rng.bit_generator.state = c.rng_states["trainer"]
        self.step = c.step
