"""Tokenizers for the pretrained models, built with the ``tokenizers``
package: WordPiece for MiniLM (its own tokenizer.json), and byte-level BPE
for SmolLM2 (vocabulary and merges read from the GGUF file) and GPT-2
(encoder.json and vocab.bpe)."""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np


def _tokenizers():
    try:
        import tokenizers
    except ImportError as e:
        raise ImportError("pretrained tokenizers need the tokenizers package: pip install tokenizers") from e
    return tokenizers


class Tokenizer:
    """A thin wrapper: ``encode``/``decode`` of text, batch encoding to a
    padded id array with its attention mask, and the special-token ids."""

    def __init__(self, inner, *, pad_id: int = 0, bos_id: Optional[int] = None,
                 eos_id: Optional[int] = None, chat_template: Optional[str] = None):
        self.inner = inner
        self.pad_id = pad_id
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.chat_template = chat_template

    @property
    def vocab_size(self) -> int:
        return self.inner.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> List[int]:
        return list(self.inner.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self.inner.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> Optional[int]:
        return self.inner.token_to_id(token)

    def batch(self, texts: Sequence[str], *, max_length: Optional[int] = None,
              add_special_tokens: bool = True):
        """Encodes texts into (ids (B, T) int64, mask (B, T) bool, True at real
        tokens), right-padded with ``pad_id`` to the longest (at most max_length)."""
        encs = [self.encode(t, add_special_tokens=add_special_tokens) for t in texts]
        if max_length is not None:
            encs = [e[:max_length] for e in encs]
        t = max((len(e) for e in encs), default=0)
        ids = np.full((len(encs), t), self.pad_id, np.int64)
        mask = np.zeros((len(encs), t), bool)
        for i, e in enumerate(encs):
            ids[i, : len(e)] = e
            mask[i, : len(e)] = True
        return ids, mask

    def apply_chat_template(self, messages: Sequence[Dict[str, str]], *,
                            add_generation_prompt: bool = True) -> str:
        """Renders a conversation the way the model was trained to read it."""
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat template")
        return render_chatml(messages, add_generation_prompt=add_generation_prompt,
                             default_system=_default_system(self.chat_template))


def _default_system(template: str) -> Optional[str]:
    """The system prompt a ChatML template inserts when the conversation has none."""
    start = "'<|im_start|>system\n"
    i = template.find(start)
    if i < 0:
        return None
    j = template.find("<|im_end|>", i)
    return template[i + len(start): j]


def render_chatml(messages, *, add_generation_prompt=True, default_system=None) -> str:
    """ChatML, as SmolLM2's template writes it: each message is
    ``<|im_start|>{role}\\n{content}<|im_end|>\\n``; a default system message
    comes first when the conversation has none."""
    out = []
    if messages and messages[0]["role"] != "system" and default_system is not None:
        out.append(f"<|im_start|>system\n{default_system}<|im_end|>\n")
    for m in messages:
        if m.get("role") not in ("system", "user", "assistant"):
            raise ValueError(f"chat message role must be system, user or assistant, got {m.get('role')!r}")
        out.append(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n")
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
    return "".join(out)


def wordpiece_from_file(path: str) -> Tokenizer:
    """MiniLM's WordPiece tokenizer from its tokenizer.json. The file turns
    fixed padding and truncation to 128 on; padding is switched off here
    (``batch`` pads to the longest) and truncation set to the 512 positions
    of BERT."""
    tk = _tokenizers()
    inner = tk.Tokenizer.from_file(path)
    inner.no_padding()
    inner.enable_truncation(max_length=512)
    pad = inner.token_to_id("[PAD]")
    return Tokenizer(inner, pad_id=0 if pad is None else pad)


def _byte_level_bpe(vocab: Dict[str, int], merges, *, split_digits: bool):
    tk = _tokenizers()
    from tokenizers import decoders, models, pre_tokenizers

    inner = tk.Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if split_digits:
        inner.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        inner.pre_tokenizer = byte_level
    inner.decoder = decoders.ByteLevel()
    return inner


def gpt2_from_files(folder: str) -> Tokenizer:
    """GPT-2's byte-level BPE from encoder.json and vocab.bpe."""
    with open(os.path.join(folder, "encoder.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(os.path.join(folder, "vocab.bpe"), encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split(" ")) for line in lines[1:] if line and not line.startswith("#")]
    inner = _byte_level_bpe(vocab, merges, split_digits=False)
    eot = vocab.get("<|endoftext|>")
    if eot is not None:
        inner.add_special_tokens(["<|endoftext|>"])
    return Tokenizer(inner, pad_id=eot or 0, bos_id=eot, eos_id=eot)


def bpe_from_gguf_metadata(meta: Dict) -> Tokenizer:
    """SmolLM2's byte-level BPE from the vocabulary and merges stored in its
    GGUF file (``tokenizer.ggml.*``), with its control tokens as specials."""
    tokens: List[str] = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type", [1] * len(tokens))
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    vocab = {t: i for i, t in enumerate(tokens)}
    pre = meta.get("tokenizer.ggml.pre", "gpt2")
    inner = _byte_level_bpe(vocab, merges, split_digits=pre in ("smollm", "llama3"))
    from tokenizers import AddedToken

    control = [t for t, kind in zip(tokens, types) if kind == 3]
    inner.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    return Tokenizer(
        inner,
        pad_id=int(meta.get("tokenizer.ggml.padding_token_id", 0)),
        bos_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_id=meta.get("tokenizer.ggml.eos_token_id"),
        chat_template=meta.get("tokenizer.chat_template"),
    )
