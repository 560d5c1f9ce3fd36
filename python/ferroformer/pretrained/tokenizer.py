"""Tokenizers for the pretrained models, built with the ``tokenizers``
package: WordPiece for MiniLM (its own tokenizer.json), and byte-level BPE
for SmolLM2 (vocabulary and merges read from the GGUF file) and GPT-2
(encoder.json and vocab.bpe)."""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from .._files import loads_json, read_json, read_text

MAX_TOKENIZER_BYTES = 64 << 20  # tokenizer.json, encoder.json, vocab.bpe
MAX_TOKEN_ID = 1 << 31


def _tokenizers():
    try:
        import tokenizers
    except ImportError as e:
        raise ImportError(
            "pretrained tokenizers need the tokenizers package: pip install tokenizers"
        ) from e
    return tokenizers


class Tokenizer:
    """A thin wrapper: ``encode``/``decode`` of text, batch encoding to a
    padded id array with its attention mask, and the special-token ids."""

    def __init__(
        self,
        inner,
        *,
        pad_id: int = 0,
        bos_id: Optional[int] = None,
        eos_id: Optional[int] = None,
        chat_template: Optional[str] = None,
    ):
        self.inner = inner
        self.pad_id = pad_id
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.chat_template = chat_template
        self._compiled = None  # (template text, jinja2 Template) once rendered
        self.pre: Optional[str] = None  # a GGUF file's tokenizer.ggml.pre

    @property
    def vocab_size(self) -> int:
        return self.inner.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> List[int]:
        return list(self.inner.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self.inner.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> Optional[int]:
        return self.inner.token_to_id(token)

    def batch(
        self,
        texts: Sequence[str],
        *,
        max_length: Optional[int] = None,
        add_special_tokens: bool = True,
    ):
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

    def apply_chat_template(
        self, messages: Sequence[Dict[str, str]], *, add_generation_prompt: bool = True
    ) -> str:
        """Renders a conversation the way the model was trained to read it."""
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat template")
        if self._compiled is None or self._compiled[0] is not self.chat_template:
            try:
                compiled = compile_chat_template(self.chat_template)
            except TemplateError as e:
                raise ValueError(f"chat template: {e}") from None
            self._compiled = (self.chat_template, compiled)
        special = {}
        for key, i in (("bos_token", self.bos_id), ("eos_token", self.eos_id)):
            tok = self.inner.id_to_token(i) if i is not None else None
            special[key] = tok or ""
        try:
            return self._compiled[1].render(
                messages=list(messages), add_generation_prompt=add_generation_prompt, **special
            )
        except TemplateError as e:
            raise ValueError(f"chat template: {e}") from None


class TemplateError(ValueError):
    """A chat template that does not compile or render (raise_exception included)."""


def compile_chat_template(template: str):
    """The Jinja template of a model's chat prompts, compiled as transformers compiles
    it: a sandboxed environment (a template cannot reach Python internals), blocks
    trimmed, ``raise_exception(msg)`` available; TemplateError for a bad template."""
    try:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as e:
        raise ImportError("chat templates need the jinja2 package: pip install jinja2") from e

    def raise_exception(message):
        raise TemplateError(str(message))

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.globals["raise_exception"] = raise_exception
    try:
        compiled = env.from_string(template)
    except jinja2.TemplateError as e:
        raise TemplateError(f"the template does not compile ({e})") from None

    class Rendering:
        def render(self, **kw):
            try:
                return compiled.render(**kw)
            except jinja2.TemplateError as e:
                raise TemplateError(str(e)) from None

    return Rendering()


def _default_system(template: str) -> Optional[str]:
    """The system prompt a ChatML template inserts when the conversation has none."""
    start = "'<|im_start|>system\n"
    i = template.find(start)
    if i < 0:
        return None
    j = template.find("<|im_end|>", i)
    return template[i + len(start) : j]


def render_chatml(messages, *, add_generation_prompt=True, default_system=None) -> str:
    """ChatML, as SmolLM2's template writes it: each message is
    ``<|im_start|>{role}\\n{content}<|im_end|>\\n``; a default system message
    comes first when the conversation has none."""
    out = []
    if messages and messages[0]["role"] != "system" and default_system is not None:
        out.append(f"<|im_start|>system\n{default_system}<|im_end|>\n")
    for m in messages:
        if m.get("role") not in ("system", "user", "assistant"):
            raise ValueError(
                f"chat message role must be system, user or assistant, got {m.get('role')!r}"
            )
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
    path = os.fspath(path)
    where = f"{path}: not a valid tokenizer.json"
    text = read_text(path, "tokenizer.json", max_bytes=MAX_TOKENIZER_BYTES)
    if not isinstance(loads_json(text, where), dict):  # depth and syntax checked here first
        raise ValueError(f"{where}: not a JSON object")
    try:
        inner = tk.Tokenizer.from_str(text)
    except Exception as e:  # the library raises a plain Exception for a bad file
        raise ValueError(f"{where}: the tokenizers library refused it ({e})") from None
    inner.no_padding()
    inner.enable_truncation(max_length=512)
    pad = inner.token_to_id("[PAD]")
    return Tokenizer(inner, pad_id=0 if pad is None else pad)


def _byte_level_bpe(vocab: Dict[str, int], merges, *, split_digits: bool, source: str = "BPE"):
    tk = _tokenizers()
    from tokenizers import decoders, models, pre_tokenizers

    try:
        inner = tk.Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    except Exception as e:  # e.g. a merge of tokens not in the vocabulary
        raise ValueError(
            f"{source}: the tokenizers library refused the vocabulary or merges ({e})"
        ) from None
    except BaseException as e:  # a Rust panic in the library (PanicException)
        if type(e).__name__ != "PanicException":
            raise
        raise ValueError(
            f"{source}: the tokenizers library failed on the vocabulary or merges ({e})"
        ) from None
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if split_digits:
        inner.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        inner.pre_tokenizer = byte_level
    inner.decoder = decoders.ByteLevel()
    return inner


def gpt2_from_files(folder: str) -> Tokenizer:
    """GPT-2's byte-level BPE from encoder.json and vocab.bpe (each checked: a
    regular UTF-8 file of bounded size; the vocabulary a JSON object of distinct
    non-negative int ids, each merge two tokens)."""
    enc = os.path.join(folder, "encoder.json")
    vocab = read_json(enc, "encoder.json", max_bytes=MAX_TOKENIZER_BYTES)
    _check_vocab(vocab, f"{enc}: not a valid encoder.json")
    bpe = os.path.join(folder, "vocab.bpe")
    lines = read_text(bpe, "vocab.bpe", max_bytes=MAX_TOKENIZER_BYTES).split("\n")
    merges = []
    for i, line in enumerate(lines[1:], 2):
        if not line or line.startswith("#"):
            continue
        pair = tuple(line.split(" "))
        if len(pair) != 2 or not all(pair):
            raise ValueError(
                f"{bpe}: not a valid vocab.bpe: line {i} is not two tokens ({line[:80]!r})"
            )
        merges.append(pair)
    inner = _byte_level_bpe(vocab, merges, split_digits=False, source=f"{folder}: vocab.bpe")
    eot = vocab.get("<|endoftext|>")
    if eot is not None:
        inner.add_special_tokens(["<|endoftext|>"])
    return Tokenizer(inner, pad_id=eot or 0, bos_id=eot, eos_id=eot)


def _check_vocab(vocab, where: str) -> None:
    if not isinstance(vocab, dict) or not vocab:
        raise ValueError(f"{where}: the vocabulary is not a non-empty JSON object")
    ids = set()
    for tok, i in vocab.items():
        if not (isinstance(i, int) and not isinstance(i, bool) and 0 <= i < MAX_TOKEN_ID):
            raise ValueError(
                f"{where}: token {tok[:40]!r} has id {i!r:.40}, not an int in [0, {MAX_TOKEN_ID})"
            )
        if i in ids:
            raise ValueError(f"{where}: id {i} is given to more than one token")
        ids.add(i)


def _list_of(meta, key, kind, where, default=None):
    v = meta.get(key, default)
    # the types present, in one pass at C speed (a vocabulary holds 50k entries);
    # subclasses (bool for int) only where the exact type is missing
    if not isinstance(v, list) or not (
        set(map(type, v)) <= {kind}
        or all(isinstance(x, kind) and not isinstance(x, bool) for x in v)
    ):
        raise ValueError(f"{where}: {key} must be a list of {kind.__name__}")
    return v


def bpe_from_gguf_metadata(meta: Dict, *, source: str = "GGUF metadata") -> Tokenizer:
    """SmolLM2's byte-level BPE from the vocabulary and merges stored in its
    GGUF file (``tokenizer.ggml.*``), with its control tokens as specials.
    ValueError (naming ``source``) for missing keys or values of the wrong type."""
    tokens: List[str] = _list_of(meta, "tokenizer.ggml.tokens", str, source)
    if not tokens or len(set(tokens)) != len(tokens):
        raise ValueError(f"{source}: tokenizer.ggml.tokens is empty or repeats a token")
    types = _list_of(meta, "tokenizer.ggml.token_type", int, source, [1] * len(tokens))
    if len(types) != len(tokens):
        raise ValueError(f"{source}: {len(types)} token types for {len(tokens)} tokens")
    raw_merges = _list_of(meta, "tokenizer.ggml.merges", str, source)
    merges = [tuple(m.split(" ", 1)) for m in raw_merges]
    for m, pair in zip(raw_merges, merges):
        if len(pair) != 2 or not pair[0] or not pair[1]:
            raise ValueError(f"{source}: merge {m[:80]!r} is not two tokens")
    ids = {}
    for key, default in (("padding_token_id", 0), ("bos_token_id", None), ("eos_token_id", None)):
        v = meta.get(f"tokenizer.ggml.{key}", default)
        if v is not None and not (
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(tokens)
        ):
            raise ValueError(
                f"{source}: tokenizer.ggml.{key} {v!r:.40} is not a token id below {len(tokens)}"
            )
        ids[key] = v
    pre = meta.get("tokenizer.ggml.pre", "gpt2")
    template = meta.get("tokenizer.chat_template")
    if not isinstance(pre, str) or not (template is None or isinstance(template, str)):
        raise ValueError(f"{source}: tokenizer.ggml.pre and tokenizer.chat_template must be text")
    vocab = {t: i for i, t in enumerate(tokens)}
    inner = _byte_level_bpe(vocab, merges, split_digits=pre in ("smollm", "llama3"), source=source)
    from tokenizers import AddedToken

    control = [t for t, kind in zip(tokens, types) if kind == 3]
    try:
        inner.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    except BaseException as e:  # a Rust panic in the library (PanicException)
        if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
            raise
        raise ValueError(
            f"{source}: the tokenizers library refused the special tokens ({e})"
        ) from None
    tok = Tokenizer(
        inner,
        pad_id=ids["padding_token_id"],
        bos_id=ids["bos_token_id"],
        eos_id=ids["eos_token_id"],
        chat_template=template,
    )
    tok.pre = pre  # the file's pre-tokenizer name (save_gguf writes it back)
    return tok
