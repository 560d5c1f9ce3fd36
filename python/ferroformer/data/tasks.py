"""Built-in algorithmic tasks, generated on the fly (nothing downloaded): copy,
reverse and multi-digit addition, each as seq2seq and as decoder-only LM data.

    task = AdditionTask(n_digits=3)
    batch = task.lm_batch(64, rng)       # {"input_ids" (B, T), "targets" (B, T)}: GPT / Llama
    batch = task.seq2seq_batch(64, rng)  # {"src", "tgt", "src_key_padding_mask", "targets"}
    acc = task.evaluate_lm(gpt, task.test_examples(1000, rng))   # exact match, greedy decoding

Tokens: PAD 0, BOS 1, EOS 2, SEP 3, then the task's symbols. LM sequences are
``BOS x SEP y EOS``; only ``y EOS`` is scored (the rest of ``targets`` is
IGNORE). Seq2seq: src ``x`` (padded), tgt ``BOS y`` and targets ``y EOS``.
Addition writes operands zero-padded to n_digits and, by default, the sum
reversed (least significant digit first, the order in which carries flow);
a fixed hashed share of all (a, b) pairs is held out of training for testing.
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np

from ..train.checks import integer, real

PAD, BOS, EOS, SEP = 0, 1, 2, 3
IGNORE = -100
N_SPECIAL = 4

Example = Tuple[List[int], List[int]]


class Task:
    """A source -> target mapping over symbol tokens; subclasses define ``sample``."""

    vocab_size: int
    max_src_len: int
    max_tgt_len: int

    def sample(self, rng) -> Example:
        raise NotImplementedError

    def train_examples(self, n: int, rng) -> List[Example]:
        return [self.sample(rng) for _ in range(integer(type(self).__name__, "n", n, low=0))]

    def test_examples(self, n: int, rng) -> List[Example]:
        return self.train_examples(n, rng)

    # -- batches ------------------------------------------------------------------------
    def lm_arrays(self, examples: List[Example]):
        """(input_ids, targets) (B, T) with T = max_src_len + max_tgt_len + 2."""
        t = self.max_src_len + self.max_tgt_len + 2
        ids = np.full((len(examples), t + 1), PAD, np.int64)
        tgt = np.full((len(examples), t), IGNORE, np.int64)
        for i, (x, y) in enumerate(examples):
            seq = [BOS, *x, SEP, *y, EOS]
            ids[i, : len(seq)] = seq
            start = len(x) + 1  # position of SEP: predicts y[0]
            tgt[i, start : start + len(y) + 1] = [*y, EOS]
        return ids[:, :-1], tgt

    def seq2seq_arrays(self, examples: List[Example]):
        b = len(examples)
        src = np.full((b, self.max_src_len), PAD, np.int64)
        tgt = np.full((b, self.max_tgt_len + 1), PAD, np.int64)
        targets = np.full((b, self.max_tgt_len + 1), IGNORE, np.int64)
        for i, (x, y) in enumerate(examples):
            src[i, : len(x)] = x
            tgt[i, : len(y) + 1] = [BOS, *y]
            targets[i, : len(y) + 1] = [*y, EOS]
        return {"src": src, "tgt": tgt, "src_key_padding_mask": src == PAD, "targets": targets}

    def _batch_size(self, batch_size) -> int:
        return integer(type(self).__name__, "batch_size", batch_size, low=1)

    def lm_batch(self, batch_size: int, rng) -> dict:
        ids, targets = self.lm_arrays(self.train_examples(self._batch_size(batch_size), rng))
        return {"input_ids": ids, "targets": targets}

    def seq2seq_batch(self, batch_size: int, rng) -> dict:
        return self.seq2seq_arrays(self.train_examples(self._batch_size(batch_size), rng))

    def lm_batch_fn(self, batch_size: int):
        batch_size = self._batch_size(batch_size)
        return lambda rng: self.lm_batch(batch_size, rng)

    def seq2seq_batch_fn(self, batch_size: int):
        batch_size = self._batch_size(batch_size)
        return lambda rng: self.seq2seq_batch(batch_size, rng)

    def _eval_args(self, examples, batch_size) -> int:
        if not len(examples):
            raise ValueError(f"{type(self).__name__}: evaluation needs at least one example")
        return self._batch_size(batch_size)

    # -- exact match under greedy decoding ----------------------------------------------
    def evaluate_lm(self, model, examples: List[Example], batch_size: int = 256) -> float:
        """Share of examples whose greedy continuation of ``BOS x SEP`` is exactly ``y EOS``."""
        from ..models.greedy import greedy_complete

        batch_size = self._eval_args(examples, batch_size)
        by_len = {}
        for x, y in examples:
            by_len.setdefault((len(x), len(y)), []).append((x, y))
        right = 0
        for (_lx, ly), group in by_len.items():
            for s in range(0, len(group), batch_size):
                chunk = group[s : s + batch_size]
                prompt = np.array([[BOS, *x, SEP] for x, _ in chunk], np.int64)
                want = np.array([[*y, EOS] for _, y in chunk], np.int64)
                got = np.asarray(greedy_complete(model, model.ops.asarray(prompt), n_new=ly + 1))
                right += int((got == want).all(axis=1).sum())
        return right / len(examples)

    def evaluate_seq2seq(self, model, examples: List[Example], batch_size: int = 256) -> float:
        """Share of examples whose greedy decoding from ``src`` is exactly ``y EOS``."""
        from ..models.greedy import greedy_decode

        batch_size = self._eval_args(examples, batch_size)
        right = 0
        for s in range(0, len(examples), batch_size):
            chunk = examples[s : s + batch_size]
            arrays = self.seq2seq_arrays(chunk)
            got = np.asarray(
                greedy_decode(
                    model,
                    model.ops.asarray(arrays["src"]),
                    bos_id=BOS,
                    eos_id=EOS,
                    max_len=self.max_tgt_len + 1,
                    src_key_padding_mask=model.ops.asarray(arrays["src_key_padding_mask"]),
                )
            )
            for row, (_, y) in zip(got, chunk):
                want = [*y, EOS]
                right += int(len(row) >= len(want) and list(row[: len(want)]) == want)
        return right / len(examples)


class CopyTask(Task):
    """y = x, a random string of ``n_symbols`` symbols with length in [min_len, max_len]."""

    def __init__(self, n_symbols: int = 10, min_len: int = 1, max_len: int = 10):
        cls = type(self).__name__
        n_symbols = integer(cls, "n_symbols", n_symbols, low=1)
        min_len, max_len = integer(cls, "min_len", min_len), integer(cls, "max_len", max_len)
        if not 1 <= min_len <= max_len:
            raise ValueError(f"{cls}: need 1 <= min_len <= max_len, got {min_len} and {max_len}")
        self.n_symbols, self.min_len, self.max_len = n_symbols, min_len, max_len
        self.vocab_size = N_SPECIAL + n_symbols
        self.max_src_len = self.max_tgt_len = max_len

    def transform(self, x: List[int]) -> List[int]:
        return list(x)

    def sample(self, rng) -> Example:
        n = int(rng.integers(self.min_len, self.max_len + 1))
        x = (rng.integers(0, self.n_symbols, n) + N_SPECIAL).tolist()
        return x, self.transform(x)


class ReverseTask(CopyTask):
    """y = x reversed."""

    def transform(self, x):
        return list(reversed(x))


class AdditionTask(Task):
    """``a + b`` for n-digit a, b: x = digits(a) '+' digits(b), y = digits(a + b)
    (n + 1 digits, reversed by default). Pairs whose hash falls in the held-out
    share are never trained on and are what ``test_examples`` draws."""

    PLUS = N_SPECIAL + 10

    def __init__(self, n_digits: int = 3, reverse_answer: bool = True, holdout: float = 0.1):
        n_digits = integer("AdditionTask", "n_digits", n_digits, low=1, high=9)
        # the hash has 10,000 buckets: both shares need at least one, or drawing from the
        # empty one would never end
        holdout = real("AdditionTask", "holdout", holdout, low=1e-4, high=1 - 1e-4)
        self.n_digits, self.reverse_answer, self.holdout = n_digits, reverse_answer, holdout
        self.vocab_size = N_SPECIAL + 11
        self.max_src_len, self.max_tgt_len = 2 * n_digits + 1, n_digits + 1

    def held_out(self, a, b):
        """Bool array: whether (a, b) belongs to the test share (a fixed hash of the pair)."""
        key = np.asarray(a, np.uint64) * np.uint64(1_000_000_007) + np.asarray(b, np.uint64)
        h = (key * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)
        return (h % np.uint64(10_000)) < np.uint64(round(self.holdout * 10_000))

    def _pairs(self, n, rng, test: bool):
        n = integer("AdditionTask", "n", n, low=0)
        hi = 10**self.n_digits
        a, b = np.empty(0, np.int64), np.empty(0, np.int64)
        while len(a) < n:
            ca, cb = rng.integers(0, hi, 2 * n + 16), rng.integers(0, hi, 2 * n + 16)
            keep = self.held_out(ca, cb) == test
            a, b = np.concatenate([a, ca[keep]]), np.concatenate([b, cb[keep]])
        return a[:n], b[:n]

    def _digits(self, v, width):
        return [N_SPECIAL + int(c) for c in str(int(v)).zfill(width)]

    def encode(self, a: int, b: int) -> Example:
        x = [*self._digits(a, self.n_digits), self.PLUS, *self._digits(b, self.n_digits)]
        y = self._digits(a + b, self.n_digits + 1)
        return x, (y[::-1] if self.reverse_answer else y)

    def train_examples(self, n, rng):
        return [self.encode(a, b) for a, b in zip(*self._pairs(n, rng, test=False))]

    def test_examples(self, n, rng):
        return [self.encode(a, b) for a, b in zip(*self._pairs(n, rng, test=True))]

    def sample(self, rng):
        return self.train_examples(1, rng)[0]
