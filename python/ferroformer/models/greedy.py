"""Greedy decoding shortcuts over ``generate`` (KV cache), kept for the tasks'
evaluation and older callers.

    out = greedy_decode(transformer, src, bos_id=1, eos_id=2, max_len=12)   # (B, <= max_len)
    new = greedy_complete(gpt, prompt_ids, n_new=4)                        # (B, 4)

Both return host int64 arrays; the model is in eval mode for the call.
"""

from __future__ import annotations


def greedy_decode(model, src, *, bos_id: int, eos_id: int, max_len: int, src_key_padding_mask=None):
    """Encoder-decoder: tokens after BOS, (B, n) with n <= max_len; rows that ended
    early are filled with eos_id after their EOS."""
    return model.generate(
        src, max_len, bos_id=bos_id, eos_id=eos_id, src_key_padding_mask=src_key_padding_mask
    )


def greedy_complete(model, prompt_ids, *, n_new: int):
    """Decoder-only: the n_new tokens that greedily follow prompt_ids (B, Tp) -> (B, n_new)."""
    return model.generate(prompt_ids, n_new)
