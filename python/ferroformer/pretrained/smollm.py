"""SmolLM2-135M-Instruct (a 30-layer Llama) on ferroformer's ``Llama``: the
4-bit GGUF file dequantised to float32, its byte-level BPE tokenizer and
ChatML template.

llama.cpp's converter permuted the rows of Q and K so that RoPE rotates
adjacent pairs (x[2i], x[2i+1]); ferroformer's rope op rotates adjacent
pairs too, so the weights load as they are.

    model, tok = load_smollm(backend="rust")
    print(chat(model, tok, "What is the capital of France?"))
"""

from __future__ import annotations

from typing import Dict

import numpy as np

from ..models import Llama
from .files import package_path
from .gguf_file import read_gguf
from .tokenizer import Tokenizer, bpe_from_gguf_metadata

NAME = "SmolLM2-135M-Instruct"


def llama_state_from_gguf(t: Dict[str, np.ndarray], n_layers: int) -> Dict[str, np.ndarray]:
    """Maps llama.cpp tensor names onto ferroformer's Llama (q, k, v stacked
    into qkv; gate and up stacked into fc1)."""

    def get(name):
        if name not in t:
            raise ValueError(f"{NAME}: the GGUF file has no tensor {name}")
        return t[name]

    out = {"tok_emb.weight": get("token_embd.weight"), "norm.weight": get("output_norm.weight")}
    for i in range(n_layers):
        g, f = f"blk.{i}.", f"blocks.{i}."
        out[f + "ln1.weight"] = get(g + "attn_norm.weight")
        out[f + "attn.qkv.weight"] = np.concatenate([get(g + f"attn_{n}.weight") for n in "qkv"])
        out[f + "attn.proj.weight"] = get(g + "attn_output.weight")
        out[f + "ln2.weight"] = get(g + "ffn_norm.weight")
        out[f + "ff.fc1.weight"] = np.concatenate([get(g + "ffn_gate.weight"), get(g + "ffn_up.weight")])
        out[f + "ff.fc2.weight"] = get(g + "ffn_down.weight")
    return out


def load_smollm(backend=None, max_seq_len: int = 2048):
    """(Llama in eval mode, tokenizer with chat template) of SmolLM2-135M-Instruct."""
    meta, tensors = read_gguf(package_path(NAME))
    if meta.get("general.architecture") != "llama":
        raise ValueError(f"{NAME}: expected a llama GGUF, got {meta.get('general.architecture')!r}")
    p = "llama."
    n_layers = int(meta[p + "block_count"])
    model = Llama(len(meta["tokenizer.ggml.tokens"]), max_seq_len=max_seq_len,
                  d_model=int(meta[p + "embedding_length"]), n_heads=int(meta[p + "attention.head_count"]),
                  n_kv_heads=int(meta[p + "attention.head_count_kv"]), n_layers=n_layers,
                  d_ff=int(meta[p + "feed_forward_length"]), rope_base=float(meta[p + "rope.freq_base"]),
                  norm_eps=float(meta[p + "attention.layer_norm_rms_epsilon"]),
                  tie_embeddings="output.weight" not in tensors, backend=backend, rng=0)
    state = llama_state_from_gguf(tensors, n_layers)
    if "output.weight" in tensors:
        state["lm_head.weight"] = tensors["output.weight"]
    model.load_state_dict(state)
    model.eval()
    return model, bpe_from_gguf_metadata(meta)


def chat(model, tok: Tokenizer, question: str, *, max_new_tokens: int = 48,
         temperature: float = 0.0, top_p=None, seed=None, stream=None) -> str:
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
            stream(text[len(shown[0]):])
            shown[0] = text

    model.generate([ids], max_new_tokens, eos_id=tok.eos_id, temperature=temperature,
                   top_p=top_p, seed=seed, callback=on_token)
    answer = tok.decode(got)
    if stream is not None and len(answer) > len(shown[0]):
        stream(answer[len(shown[0]):])
    return answer
