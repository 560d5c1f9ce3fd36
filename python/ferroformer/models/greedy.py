"""Greedy autoregressive decoding by full recomputation over the growing prefix
(no KV cache: fine for the short sequences of the built-in tasks).

    out = greedy_decode(transformer, src, bos_id=1, eos_id=2, max_len=12)   # (B, <= max_len)
    new = greedy_complete(gpt, prompt_ids, n_new=4)                        # (B, 4)

Both switch the model to eval mode for the call and restore the mode after.
"""

from __future__ import annotations


def greedy_decode(model, src, *, bos_id: int, eos_id: int, max_len: int,
                  src_key_padding_mask=None):
    """Encoder-decoder: tokens after BOS, (B, n) with n <= max_len; rows that ended
    early are filled with eos_id after their EOS."""
    xp = model.ops.xp
    was_training = model.training
    model.eval()
    try:
        mask = model.source_mask(src, src_key_padding_mask)
        memory = model.encode(src, mask)
        b = src.shape[0]
        out = xp.full((b, 1), bos_id, dtype=src.dtype)
        done = xp.zeros(b, dtype=bool)
        for _ in range(max_len):
            nxt = model.decode(out, memory, mask)[:, -1].argmax(axis=-1).astype(src.dtype)
            nxt = xp.where(done, eos_id, nxt)
            out = xp.concatenate([out, nxt[:, None]], axis=1)
            done |= nxt == eos_id
            if bool(done.all()):
                break
        return out[:, 1:]
    finally:
        model.train(was_training)


def greedy_complete(model, prompt_ids, *, n_new: int):
    """Decoder-only: the n_new tokens that greedily follow prompt_ids (B, Tp) -> (B, n_new)."""
    xp = model.ops.xp
    was_training = model.training
    model.eval()
    try:
        ids = prompt_ids
        for _ in range(n_new):
            nxt = model(ids)[:, -1].argmax(axis=-1).astype(ids.dtype)
            ids = xp.concatenate([ids, nxt[:, None]], axis=1)
        return ids[:, prompt_ids.shape[1]:]
    finally:
        model.train(was_training)
