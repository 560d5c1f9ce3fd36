"""SmolLM2-135M-Instruct (a 30-layer Llama) on ferroformer's ``Llama``: the
4-bit GGUF file loaded by ``ferroformer.load_gguf`` (its matrices kept in their
memory-mapped blocks; ``dequantize=True`` decodes everything to float32
instead), its byte-level BPE tokenizer and ChatML template.

llama.cpp's converter permuted the rows of Q and K so that RoPE rotates
adjacent pairs (x[2i], x[2i+1]); ferroformer's rope op rotates adjacent
pairs too, so the weights load as they are.

    model, tok = load_smollm(backend="rust")
    print(chat(model, tok, "What is the capital of France?"))
"""

from __future__ import annotations

import os
from typing import Dict

import numpy as np

from ..checkpoint import check_config_against_tensors
from ..models import Llama
from .files import package_path
from .gguf_file import llama_config_from_gguf, read_gguf
from .tokenizer import Tokenizer, bpe_from_gguf_metadata

NAME = "SmolLM2-135M-Instruct"


def llama_state_from_gguf(
    t: Dict[str, np.ndarray], n_layers: int, *, source: str = NAME
) -> Dict[str, np.ndarray]:
    """Maps llama.cpp tensor names onto ferroformer's Llama (q, k, v stacked
    into qkv; gate and up stacked into fc1). ValueError (naming ``source``) for a
    missing or non-finite tensor, or stacked tensors whose widths differ."""

    def get(name):
        if name not in t:
            raise ValueError(f"{source}: the GGUF file has no tensor {name}")
        if not np.isfinite(t[name]).all():
            raise ValueError(f"{source}: tensor {name} holds non-finite values")
        return t[name]

    def stacked(names):
        parts = [get(n) for n in names]
        if len({p.shape[1:] for p in parts}) != 1:
            raise ValueError(
                f"{source}: tensors {names} have shapes {[p.shape for p in parts]}, "
                f"which do not stack"
            )
        return np.concatenate(parts)

    out = {"tok_emb.weight": get("token_embd.weight"), "norm.weight": get("output_norm.weight")}
    for i in range(n_layers):
        g, f = f"blk.{i}.", f"blocks.{i}."
        out[f + "ln1.weight"] = get(g + "attn_norm.weight")
        out[f + "attn.qkv.weight"] = stacked([g + f"attn_{n}.weight" for n in "qkv"])
        out[f + "attn.proj.weight"] = get(g + "attn_output.weight")
        out[f + "ln2.weight"] = get(g + "ffn_norm.weight")
        out[f + "ff.fc1.weight"] = stacked([g + "ffn_gate.weight", g + "ffn_up.weight"])
        out[f + "ff.fc2.weight"] = get(g + "ffn_down.weight")
    return out


def load_smollm(
    backend=None,
    max_seq_len: int = 2048,
    path=None,
    *,
    dequantize: bool = False,
    activations: str = "float",
):
    """(Llama in eval mode, tokenizer with chat template) of SmolLM2-135M-Instruct, from
    its package (or from the GGUF file at ``path``), through ``ferroformer.load_gguf``:
    the weight matrices stay in the file's memory-mapped 4-bit blocks. The file is
    checked first (ValueError naming it), and its metadata against the tensors' shapes
    before the model is built. ``dequantize=True``: every tensor decoded to float32 into
    a plain float Llama instead (seconds, and several times the file in memory).
    ``activations``: "float" (the default here: the float model's answers) or "int8"
    (llama.cpp's arithmetic, about 3x faster decoding; this 135M model is fragile
    enough that its greedy answers then change, e.g. to the capital question, exactly
    as llama.cpp's do)."""
    path = package_path(NAME) if path is None else os.fspath(path)
    if dequantize:
        return _load_dequantized(path, backend, max_seq_len)
    from ..quant.gguf_file import load_gguf

    model, tok = load_gguf(path, backend=backend, max_seq_len=max_seq_len, activations=activations)
    if not isinstance(model, Llama) or tok is None:  # a gpt2 file, or no BPE tokenizer
        raise ValueError(
            f"{path}: not a valid {NAME} GGUF file: expected a llama file with "
            f"a byte-level BPE tokenizer"
        )
    return model, tok


def _load_dequantized(path: str, backend, max_seq_len: int):
    meta, tensors = read_gguf(path)
    config = llama_config_from_gguf(meta, tensors, max_seq_len, path)
    try:
        Llama.validate_config(config)
    except ValueError as e:
        raise ValueError(f"{path}: not a valid {NAME} GGUF file: {e}") from None
    if config["n_layers"] > len(tensors):
        raise ValueError(
            f"{path}: llama.block_count {config['n_layers']}, but the file holds "
            f"only {len(tensors)} tensors"
        )
    state = llama_state_from_gguf(tensors, config["n_layers"], source=path)
    if "output.weight" in tensors:
        state["lm_head.weight"] = get_finite(tensors, "output.weight", path)
    check_config_against_tensors(
        path, "Llama", config, {k: v.shape for k, v in state.items()}, what=f"{NAME} GGUF file"
    )
    tok = bpe_from_gguf_metadata(meta, source=f"{path}: not a valid {NAME} GGUF file")
    model = Llama(**config, backend=backend, rng=0)
    model.load_state_dict(state)
    model.eval()
    return model, tok


def get_finite(tensors, name, source):
    if not np.isfinite(tensors[name]).all():
        raise ValueError(f"{source}: tensor {name} holds non-finite values")
    return tensors[name]


def chat(
    model,
    tok: Tokenizer,
    question: str,
    *,
    max_new_tokens: int = 48,
    temperature: float = 0.0,
    top_p=None,
    seed=None,
    stream=None,
) -> str:
    """The model's answer to one user message, decoded with the KV cache
    (greedy unless a temperature is given), stopping at the end-of-turn token.
    stream(text) receives the answer piece by piece as it is generated."""
    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": question}]))
    got, shown = [], [""]

    def on_token(nxt):
        if int(nxt[0]) == tok.eos_id:
            return
        got.append(int(nxt[0]))
        text = tok.decode(got)
        # print only once a piece decodes cleanly (a character may span tokens)
        if stream is not None and not text.endswith("\ufffd") and len(text) > len(shown[0]):
            stream(text[len(shown[0]) :])
            shown[0] = text

    model.generate(
        [ids],
        max_new_tokens,
        eos_id=tok.eos_id,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        callback=on_token,
    )
    answer = tok.decode(got)
    if stream is not None and len(answer) > len(shown[0]):
        stream(answer[len(shown[0]) :])
    return answer
