"""Autoregressive generation and teacher-forced scoring.

Decoder-only models (GPT, Llama):

    new = generate(model, [[5, 6, 7], [8, 9]], max_new_tokens=20, eos_id=2)   # (2, n) int64
    new = generate(model, ids, max_new_tokens=20, temperature=0.8, top_p=0.9, seed=0)
    lp = score(model, prompt_ids, target_ids)      # (B, Tt) log p(target | prompt, earlier target)

Encoder-decoder (Transformer):

    out = generate_seq2seq(model, src, max_len=30, bos_id=1, eos_id=2)   # (B, n) after BOS
    lp = score_seq2seq(model, src, tgt, bos_id=1)                        # (B, Tt)

Prompts of different lengths are left-padded into one batch; the padding is
masked and each row keeps its own positions, so a row generates what it
would generate alone. With ``use_cache=True`` (the default) each step feeds
only the new token through the model against a ``KVCache``; with False every
step recomputes the whole sequence (the reference the cache is tested
against). ``temperature=0`` is greedy; sampling is seeded by ``seed``. Rows
that have produced ``eos_id`` are filled with ``eos_id`` afterwards, and the
loop stops when every row has. The model is in eval mode for the call and
back in its previous mode after it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Optional, Sequence

import numpy as np

from ..backends import to_host
from .cache import KVCache
from .sampling import check_sampling_args, sample_next


@contextmanager
def _eval(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def left_pad(prompts, pad_id: int = 0):
    """A (B, T) int array, or a sequence of 1-D int sequences of any lengths
    -> (ids (B, T) int64 left-padded with pad_id, pad (B,) padding counts)."""
    if hasattr(prompts, "ndim") and getattr(prompts, "ndim", 0) == 2:
        ids = to_host(prompts)
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"generate: prompt ids must be integers, got {ids.dtype}")
        if ids.shape[0] == 0 or ids.shape[1] == 0:
            raise ValueError(f"generate: empty prompt batch {ids.shape}")
        return ids.astype(np.int64, copy=False), np.zeros(ids.shape[0], np.int64)
    rows = [np.asarray(to_host(p)).reshape(-1) for p in prompts]
    if not rows or any(r.size == 0 for r in rows):
        raise ValueError("generate: every prompt needs at least one token")
    for r in rows:
        if not np.issubdtype(r.dtype, np.integer):
            raise TypeError(f"generate: prompt ids must be integers, got {r.dtype}")
    t = max(r.size for r in rows)
    ids = np.full((len(rows), t), pad_id, dtype=np.int64)
    pad = np.zeros(len(rows), np.int64)
    for i, r in enumerate(rows):
        ids[i, t - r.size :] = r
        pad[i] = t - r.size
    return ids, pad


def _max_len(model) -> int:
    return int(model.config.get("max_seq_len", 1 << 30))


class _Picker:
    """Chooses each step's tokens, tracks finished rows, collects the output and moves
    the progress bar: the part both decoding loops share."""

    def __init__(self, batch, n, progress, temperature, top_k, top_p, eos_id, seed, callback):
        check_sampling_args(temperature, top_k, top_p)
        self.callback = callback
        self.kw = dict(temperature=temperature, top_k=top_k, top_p=top_p)
        self.rng = np.random.default_rng(seed)
        self.eos_id = eos_id
        self.out = np.full((batch, n), -1 if eos_id is None else eos_id, dtype=np.int64)
        self.done = np.zeros(batch, bool)
        self.n = 0
        self.bar = _bar(progress, n)

    def pick(self, logits):
        """logits (B, V) (any backend) -> next ids (B,) host int64; True when all rows are done."""
        nxt = sample_next(to_host(logits), rng=self.rng, **self.kw)
        if self.eos_id is not None:
            nxt = np.where(self.done, self.eos_id, nxt)
            self.done |= nxt == self.eos_id
        self.out[:, self.n] = nxt
        self.n += 1
        if self.callback is not None:
            self.callback(nxt.copy())
        self.bar.update(1)
        return nxt, bool(self.done.all()) if self.eos_id is not None else False

    def result(self):
        self.bar.close()
        return self.out[:, : self.n]


def generate(
    model,
    prompts,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    eos_id: Optional[int] = None,
    seed=None,
    use_cache: bool = True,
    pad_id: int = 0,
    progress: bool = False,
    callback=None,
):
    """New tokens after each prompt, (B, n) int64 with n <= max_new_tokens.
    callback(ids (B,) int64) sees each step's tokens as they come (for streaming)."""
    if max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens must be >= 1, got {max_new_tokens}")
    ids, pad = left_pad(prompts, pad_id)
    b, t = ids.shape
    vocab = int(model.config["vocab_size"])
    if ids.min() < 0 or ids.max() >= vocab:
        raise IndexError(
            f"generate: prompt ids must be in [0, {vocab}), got {ids.min()}..{ids.max()}"
        )
    total = t + max_new_tokens - 1  # the last new token is never fed back
    if total > _max_len(model):
        raise ValueError(
            f"generate: prompt length {t} + max_new_tokens {max_new_tokens} - 1 = "
            f"{total} positions exceed the model's max_seq_len {_max_len(model)}"
        )
    picker = _Picker(b, max_new_tokens, progress, temperature, top_k, top_p, eos_id, seed, callback)
    xp = model.ops.xp
    with _eval(model):
        if use_cache:
            cache = model.new_cache(b, total, pad=pad)
            logits = model(xp.asarray(ids), cache=cache, last_only=True)
            for step in range(max_new_tokens):
                nxt, finished = picker.pick(logits[:, -1])
                if finished or step == max_new_tokens - 1:
                    break
                logits = model(xp.asarray(nxt[:, None]), cache=cache, last_only=True)
        else:
            seq = ids
            for _ in range(max_new_tokens):
                # a fresh cache per step: the whole sequence goes through the model again
                cache = model.new_cache(b, seq.shape[1], pad=pad)
                logits = model(xp.asarray(seq), cache=cache, last_only=True)
                nxt, finished = picker.pick(logits[:, -1])
                if finished:
                    break
                seq = np.concatenate([seq, nxt[:, None]], axis=1)
    return picker.result()


def generate_seq2seq(
    model,
    src,
    *,
    max_len: int,
    bos_id: int,
    eos_id: Optional[int] = None,
    temperature: float = 0.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    seed=None,
    use_cache: bool = True,
    src_key_padding_mask=None,
    progress: bool = False,
    callback=None,
):
    """Target tokens after BOS for each source row, (B, n) int64 with n <= max_len;
    callback(ids (B,)) sees each step's tokens as they come."""
    if max_len < 1:
        raise ValueError(f"generate: max_len must be >= 1, got {max_len}")
    if max_len > _max_len(model):  # BOS and all but the last new token are fed
        raise ValueError(
            f"generate: max_len {max_len} exceeds the model's max_seq_len {_max_len(model)}"
        )
    xp = model.ops.xp
    src = xp.asarray(src)
    if src.ndim != 2:
        raise ValueError(f"generate: src must be (B, Ts) token ids, got shape {tuple(src.shape)}")
    b = src.shape[0]
    picker = _Picker(b, max_len, progress, temperature, top_k, top_p, eos_id, seed, callback)
    with _eval(model):
        mask = model.source_mask(src, src_key_padding_mask)
        memory = model.encode(src, mask)
        tgt = np.full((b, 1), bos_id, dtype=np.int64)
        cache = model.new_cache(b, max_len) if use_cache else None
        step_in = tgt
        for _ in range(max_len):
            if use_cache:
                logits = model.decode(
                    xp.asarray(step_in), memory, mask, cache=cache, last_only=True
                )
            else:
                logits = model.decode(xp.asarray(tgt), memory, mask, last_only=True)
            nxt, finished = picker.pick(logits[:, -1])
            if finished:
                break
            step_in = nxt[:, None]
            tgt = np.concatenate([tgt, step_in], axis=1)
    return picker.result()


def _log_softmax(logits):
    z = to_host(logits).astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def score(model, prompt_ids, target_ids):
    """Teacher-forced log-probabilities (B, Tt) float64 of target_ids (B, Tt) following
    prompt_ids (B, Tp): entry [b, i] is log p(target[b, i] | prompt[b], target[b, :i])."""
    prompt, target = to_host(prompt_ids), to_host(target_ids)
    if (
        prompt.ndim != 2
        or target.ndim != 2
        or prompt.shape[0] != target.shape[0]
        or prompt.shape[1] == 0
    ):
        raise ValueError(
            f"score: need prompt (B, Tp >= 1) and target (B, Tt) ids, got "
            f"{prompt.shape} and {target.shape}"
        )
    seq = np.concatenate([prompt, target], axis=1).astype(np.int64)
    with _eval(model):
        logits = model(model.ops.xp.asarray(seq[:, :-1]))
    tp = prompt.shape[1]
    lp = _log_softmax(logits[:, tp - 1 :])
    return np.take_along_axis(lp, target[..., None].astype(np.int64), axis=-1)[..., 0]


def score_seq2seq(model, src, tgt, *, bos_id: int, src_key_padding_mask=None):
    """Teacher-forced log-probabilities (B, Tt) of tgt (B, Tt) given src under the
    encoder-decoder: entry [b, i] is log p(tgt[b, i] | src[b], BOS, tgt[b, :i])."""
    tgt = to_host(tgt).astype(np.int64)
    if tgt.ndim != 2:
        raise ValueError(f"score: tgt must be (B, Tt) ids, got {tgt.shape}")
    inp = np.concatenate([np.full((tgt.shape[0], 1), bos_id, np.int64), tgt[:, :-1]], axis=1)
    xp = model.ops.xp
    with _eval(model):
        logits = model(xp.asarray(src), xp.asarray(inp), src_key_padding_mask)
    return np.take_along_axis(_log_softmax(logits), tgt[..., None], axis=-1)[..., 0]


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _bar(progress: bool, total: int):
    if not progress:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="generate", unit="tok", leave=False)


def new_cache(model, layers: Sequence, batch: int, capacity: int, pad=None) -> KVCache:
    """A KVCache on the model's backend holding the decode states of ``layers`` (its
    blocks, each with ``new_state``), in the model's dtype."""
    return KVCache(model.ops, layers, batch, capacity, pad=pad, dtype=model._dtype)
