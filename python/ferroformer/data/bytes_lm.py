"""A byte-level language-model dataset over any text files; by default the
Python standard library's own ``.py`` sources on this machine (found at run
time, never shipped).

    data = ByteLMDataset(max_bytes=1 << 20)            # stdlib sources
    batch = data.batch(16, 128, rng)                    # {"input_ids", "targets"} (16, 128)
    data.unigram_entropy()                              # nats per byte of the validation split
    data.evaluate(model, seq_len=128)                   # mean validation loss (nats per byte)
"""

from __future__ import annotations

import glob
import os
import sysconfig
from typing import List, Optional, Sequence

import numpy as np

from ..train.checks import integer, real


def stdlib_sources() -> List[str]:
    """The standard library's top-level .py files, sorted (so the data is reproducible)."""
    root = sysconfig.get_paths().get("stdlib") or os.path.dirname(os.__file__)
    if not os.path.isdir(root):
        root = os.path.dirname(os.__file__)
    files = sorted(glob.glob(os.path.join(root, "*.py")))
    if not files:
        raise FileNotFoundError(f"no .py sources found in {root}")
    return files


class ByteLMDataset:
    vocab_size = 256

    def __init__(
        self,
        paths: Optional[Sequence[str]] = None,
        *,
        max_bytes: int = 1 << 22,
        val_fraction: float = 0.1,
    ):
        """Reads ``paths`` (default: stdlib sources) in order up to ``max_bytes``; the last
        ``val_fraction`` of the bytes is the validation split."""
        max_bytes = integer("ByteLMDataset", "max_bytes", max_bytes, low=1)
        val_fraction = real(
            "ByteLMDataset",
            "val_fraction",
            val_fraction,
            low=0,
            high=1,
            low_open=True,
            high_open=True,
        )
        paths = list(paths) if paths is not None else stdlib_sources()
        chunks, total = [], 0
        for p in paths:
            with open(p, "rb") as f:
                b = f.read(max_bytes - total)
            chunks.append(b)
            total += len(b)
            if total >= max_bytes:
                break
        data = np.frombuffer(b"".join(chunks), dtype=np.uint8)
        n_val = int(len(data) * val_fraction)
        if n_val < 2 or len(data) - n_val < 2:
            raise ValueError(f"ByteLMDataset: {len(data)} bytes is too little text")
        self.paths = paths
        self.train, self.val = data[:-n_val], data[-n_val:]

    def batch(self, batch_size: int, seq_len: int, rng, split: str = "train") -> dict:
        if split not in ("train", "val"):
            raise ValueError(f"ByteLMDataset: split must be 'train' or 'val', got {split!r}")
        batch_size = integer("ByteLMDataset", "batch_size", batch_size, low=1)
        seq_len = integer("ByteLMDataset", "seq_len", seq_len, low=1)
        data = self.train if split == "train" else self.val
        if len(data) <= seq_len + 1:
            raise ValueError(f"ByteLMDataset: the {split} split is shorter than seq_len + 1")
        start = rng.integers(0, len(data) - seq_len - 1, batch_size)
        idx = start[:, None] + np.arange(seq_len + 1)[None, :]
        window = data[idx].astype(np.int64)
        return {"input_ids": window[:, :-1], "targets": window[:, 1:]}

    def batch_fn(self, batch_size: int, seq_len: int):
        batch_size = integer("ByteLMDataset", "batch_size", batch_size, low=1)
        seq_len = integer("ByteLMDataset", "seq_len", seq_len, low=1)
        return lambda rng: self.batch(batch_size, seq_len, rng)

    def unigram_entropy(self, split: str = "val") -> float:
        """Entropy (nats) of the split's own byte frequencies: the loss of the best
        context-free model, the bar a language model has to get well under."""
        counts = np.bincount(self.val if split == "val" else self.train, minlength=256)
        p = counts[counts > 0] / counts.sum()
        return float(-(p * np.log(p)).sum())

    def evaluate(self, model, seq_len: int, batch_size: int = 16, max_batches: int = 8) -> float:
        """Mean cross-entropy (nats per byte) over evenly spaced validation windows."""
        from ..train.losses import CrossEntropyLoss

        seq_len = integer("ByteLMDataset", "seq_len", seq_len, low=1)
        batch_size = integer("ByteLMDataset", "batch_size", batch_size, low=1)
        max_batches = integer("ByteLMDataset", "max_batches", max_batches, low=1)
        if len(self.val) <= seq_len + 1:
            raise ValueError(
                f"ByteLMDataset: the val split ({len(self.val)} bytes) is shorter "
                f"than seq_len + 1 ({seq_len + 1})"
            )
        loss_fn = CrossEntropyLoss(ops=model.ops)
        n = min(batch_size * max_batches, (len(self.val) - 1) // seq_len)
        starts = np.linspace(0, len(self.val) - seq_len - 1, n).astype(np.int64)
        was_training = model.training
        model.eval()
        try:
            losses = []
            for s in range(0, n, batch_size):
                idx = starts[s : s + batch_size, None] + np.arange(seq_len + 1)[None, :]
                w = self.val[idx].astype(np.int64)
                logits = model(model.ops.asarray(w[:, :-1]))
                losses.append(loss_fn(logits, w[:, 1:]) * len(idx))
            return float(sum(losses) / n)
        finally:
            model.train(was_training)
