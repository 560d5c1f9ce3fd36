"""Decoding: KV caches, generation loops, teacher-forced scoring and sampling."""

from .cache import KVCache, LayerCache
from .decoding import generate, generate_seq2seq, left_pad, score, score_seq2seq
from .sampling import filter_logits, sample_next

__all__ = [
    "KVCache",
    "LayerCache",
    "filter_logits",
    "generate",
    "generate_seq2seq",
    "left_pad",
    "sample_next",
    "score",
    "score_seq2seq",
]
