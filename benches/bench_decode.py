"""Greedy decode speed at batch 1 of a GPT-2-small-sized model (12 layers,
d_model 768, 12 heads, vocab 50257, fp32, random weights rng=0): the prefill
of a random prompt (128 tokens) and then single-token steps against a KV
cache, on ferroformer's rust and numpy backends and on PyTorch eager (with its
own preallocated KV cache) when ``torch`` imports. PyTorch runs the very same
weights, taken from the ferroformer model's ``state_dict()``, and the script
checks that both produce the same greedy tokens.

    python benches/bench_decode.py                    # full size, all contenders
    python benches/bench_decode.py --small            # tiny model: a quick correctness check
    python benches/bench_decode.py --new-tokens 128 --threads 2 --no-numpy
    python benches/bench_decode.py --profile          # + where one rust decode step spends its time

After the table it prints the ceiling that memory bandwidth puts on any fp32
decoder here (all weights read once per token at the best rate a one-row
product streams a 400 MB matrix on this machine); --no-bound skips it.

Without ferroformer installed in the environment (e.g. a torch-only venv):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=python \\
        /work/benchenv/bin/python benches/bench_decode.py

The prefill forward yields the first new token; each of the remaining N - 1
tokens costs one single-token step, and "decode tokens/s" is (N - 1) over the
time of those steps (logits to host and argmax included). After a warm-up, the
contenders take turns for ``--repeat`` rounds (so a burst of load from other
jobs hits them alike) and each keeps its best prefill and best decode time.
Not collected by pytest (benches/ is outside ``testpaths`` and nothing here is
named test_*); tests/test_bench_scripts.py checks the torch peers on tiny models.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

import ferroformer as ff
from ferroformer.models import GPT

GPT2_SMALL = dict(vocab_size=50257, max_seq_len=1024, d_model=768, n_heads=12, n_layers=12)
TINY = dict(vocab_size=512, max_seq_len=256, d_model=64, n_heads=4, n_layers=2)


# -- timing a greedy decode ------------------------------------------------------------


@dataclass
class Run:
    """One contender's greedy decode: the generated tokens, the prefill time, and the
    time of the single-token steps after it (len(tokens) - 1 of them)."""

    name: str
    tokens: List[int]
    prefill_s: float
    decode_s: float
    prefill_logits: np.ndarray = field(repr=False, default=None)
    last_logits: np.ndarray = field(repr=False, default=None)

    @property
    def steps(self) -> int:
        return len(self.tokens) - 1

    @property
    def tokens_per_s(self) -> float:
        return self.steps / self.decode_s if self.steps and self.decode_s > 0 else float("nan")


class Decoder:
    """What ``greedy`` drives: ``start(capacity)`` empties the cache, ``prefill(ids)``
    and ``step(token)`` return the last position's logits (V,) as a host array."""

    def start(self, capacity: int) -> None:
        raise NotImplementedError

    def prefill(self, ids: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def step(self, token: int) -> np.ndarray:
        raise NotImplementedError


def _host(x) -> np.ndarray:
    return np.asarray(x.get() if hasattr(x, "get") else x)


class FerroDecoder(Decoder):
    """A ferroformer causal LM (GPT, Llama) through ``new_cache`` and
    ``model(ids, cache=cache, last_only=True)``, as ``model.generate`` does.
    With ``backend``, ``start`` moves the model there first (host backends share
    the arrays, so one model serves both rust and numpy)."""

    def __init__(self, model, backend: Optional[str] = None):
        self.model = model.eval()
        self.backend = backend
        self.cache = None

    def start(self, capacity: int) -> None:
        if self.backend is not None:
            self.model.to(self.backend)
        self.cache = self.model.new_cache(1, capacity)

    def _run(self, ids: np.ndarray) -> np.ndarray:
        xp = self.model.ops.xp
        logits = self.model(xp.asarray(ids), cache=self.cache, last_only=True)
        return _host(logits)[0, -1]

    def prefill(self, ids: np.ndarray) -> np.ndarray:
        return self._run(np.asarray(ids, np.int64)[None, :])

    def step(self, token: int) -> np.ndarray:
        return self._run(np.array([[token]], np.int64))


def greedy(decoder: Decoder, prompt: Sequence[int], n_new: int, name: str = "") -> Run:
    """n_new greedy tokens after prompt: one prefill, then n_new - 1 single-token steps."""
    prompt = np.asarray(prompt, np.int64)
    decoder.start(len(prompt) + n_new)
    t0 = time.perf_counter()
    logits = decoder.prefill(prompt)
    tokens = [int(np.argmax(logits))]
    t1 = time.perf_counter()
    last = logits
    for _ in range(n_new - 1):
        last = decoder.step(tokens[-1])
        tokens.append(int(np.argmax(last)))
    t2 = time.perf_counter()
    return Run(
        name, tokens, t1 - t0, t2 - t1, np.array(logits, np.float32), np.array(last, np.float32)
    )


def measure(
    contenders: Dict[str, Tuple[Decoder, int]], prompt: Sequence[int], repeat: int = 2
) -> List[Run]:
    """Each contender (name -> (decoder, new tokens)) warmed up, then ``repeat`` rounds
    taking the contenders in turn, so that a burst of load from elsewhere hits all of
    them alike; the best prefill and the best decode time of each. The rounds of one
    contender must generate the same tokens."""
    for dec, n in contenders.values():  # warm-up: thread pools, first-touch pages, caches
        greedy(dec, prompt[: min(len(prompt), 8)], min(n, 3))
    best: Dict[str, Run] = {}
    for i in range(max(1, repeat)):
        rates = []
        for name, (dec, n) in contenders.items():
            run = greedy(dec, prompt, n, name)
            rates.append(f"{name} {run.prefill_s * 1e3:.0f} ms + {run.tokens_per_s:.1f} tok/s")
            old = best.get(name)
            if old is None:
                best[name] = run
                continue
            if old.tokens != run.tokens:
                raise RuntimeError(f"{name}: two runs of the same greedy decode differ")
            old.prefill_s, old.decode_s = (
                min(old.prefill_s, run.prefill_s),
                min(old.decode_s, run.decode_s),
            )
        print(f"round {i + 1}: " + "; ".join(rates), flush=True)
    return [best[k] for k in contenders]


# -- threads and machine -----------------------------------------------------------------


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def set_threads(n: int) -> List[str]:
    """The same thread count for the rust kernels, NumPy's BLAS (when threadpoolctl
    is installed) and PyTorch (when it imports); returns notes for the header."""
    ff.set_num_threads(n)
    notes = [f"rust {ff.get_num_threads()}"]
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
        notes.append(f"BLAS {n}")
    except ImportError:
        notes.append("BLAS as the environment sets it (no threadpoolctl)")
    torch = import_torch()
    if torch is not None:
        torch.set_num_threads(n)
        notes.append(f"torch {torch.get_num_threads()}")
    return notes


def import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(thread_notes: Sequence[str]) -> str:
    import ferroformer as ff

    torch = import_torch()
    parts = [
        f"{datetime.datetime.now().isoformat(timespec='seconds')}",
        f"{_cpu_name()}, {os.cpu_count()} logical CPUs, simd {ff.simd_level()}",
        f"threads: {', '.join(thread_notes)}",
        f"numpy {np.__version__}" + (f", torch {torch.__version__}" if torch else ", no torch"),
    ]
    if hasattr(os, "getloadavg"):
        parts.append("load average at start: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    return "\n".join("# " + p for p in parts)


# -- reporting --------------------------------------------------------------------------


def compare_tokens(a: Run, b: Run) -> str:
    """One line: do a and b generate the same greedy tokens (over the shorter run)?"""
    n = min(len(a.tokens), len(b.tokens))
    diff = float(np.max(np.abs(a.prefill_logits - b.prefill_logits)))
    first = next((i for i in range(n) if a.tokens[i] != b.tokens[i]), None)
    verdict = "MATCH" if first is None else f"DIFFER from token {first}"
    line = (
        f"{a.name} vs {b.name}: greedy tokens {verdict} over the first {n} "
        f"({len(set(a.tokens[:n]))} distinct; prefill logits max |diff| {diff:.2e}"
    )
    if len(a.tokens) == len(b.tokens):
        line += f", last step {float(np.max(np.abs(a.last_logits - b.last_logits))):.2e}"
    return line + ")"


def table(runs: Sequence[Run], ref: Optional[str] = "torch") -> str:
    """Markdown: prefill ms, decode tokens/s, and each ratio to ``ref`` (speed-up, > 1 is faster)."""
    by = {r.name: r for r in runs}
    base = by.get(ref)
    head = ["contender", "prefill ms", "decode tok/s", "tokens timed"]
    if base is not None:
        head += [f"prefill vs {ref}", f"decode vs {ref}"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in runs:
        cells = [r.name, f"{r.prefill_s * 1e3:.1f}", f"{r.tokens_per_s:.1f}", str(r.steps)]
        if base is not None:
            cells += [
                f"{base.prefill_s / r.prefill_s:.2f}x",
                f"{r.tokens_per_s / base.tokens_per_s:.2f}x",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- PyTorch GPT-2 with a KV cache ---------------------------------------------------------


def torch_gpt(state: Dict[str, np.ndarray], cfg: Dict, eps: float = 1e-5):
    """A PyTorch eager GPT-2 (tied head, learned positions, pre-norm LayerNorm, GELU
    tanh, fused qkv, SDPA) holding ferroformer GPT weights, as a ``Decoder``."""
    import torch
    import torch.nn as tnn
    import torch.nn.functional as F

    c, h, n_layers = cfg["d_model"], cfg["n_heads"], cfg["n_layers"]
    d_ff = state["blocks.0.ff.fc1.weight"].shape[0]
    hd = c // h

    class Block(tnn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = tnn.LayerNorm(c, eps), tnn.LayerNorm(c, eps)
            self.qkv, self.proj = tnn.Linear(c, 3 * c), tnn.Linear(c, c)
            self.fc1, self.fc2 = tnn.Linear(c, d_ff), tnn.Linear(d_ff, c)

        def forward(self, x, kc, vc, pos):
            b, t, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, h, hd).permute(2, 0, 3, 1, 4)
            kc[:, :, pos : pos + t] = k
            vc[:, :, pos : pos + t] = v
            # a prefill from position 0 is plain causal; a one-token step sees everything
            assert t == 1 or pos == 0, "multi-token steps after a prefix are not needed here"
            a = F.scaled_dot_product_attention(
                q, kc[:, :, : pos + t], vc[:, :, : pos + t], is_causal=t > 1
            )
            x = x + self.proj(a.transpose(1, 2).reshape(b, t, c))
            return x + self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate="tanh"))

    class GPT2(tnn.Module):
        def __init__(self):
            super().__init__()
            self.wte = tnn.Embedding(cfg["vocab_size"], c)
            self.wpe = tnn.Embedding(cfg["max_seq_len"], c)
            self.blocks = tnn.ModuleList(Block() for _ in range(n_layers))
            self.ln_f = tnn.LayerNorm(c, eps)

        def forward(self, ids, caches, pos):
            t = ids.shape[1]
            x = self.wte(ids) + self.wpe(torch.arange(pos, pos + t))
            for blk, (kc, vc) in zip(self.blocks, caches):
                x = blk(x, kc, vc, pos)
            return self.ln_f(x[:, -1]) @ self.wte.weight.T

    model = GPT2()
    own = {}
    for name, value in state.items():
        name = name.replace(".attn.qkv", ".qkv").replace(".attn.proj", ".proj").replace(".ff.", ".")
        own[name] = torch.from_numpy(np.array(value, np.float32))
    missing, unexpected = model.load_state_dict(own, strict=False)
    if missing or [u for u in unexpected if u != "head.weight"]:
        raise RuntimeError(f"torch GPT-2: missing {missing}, unexpected {unexpected}")
    model.eval()
    return TorchDecoder(
        model,
        lambda cap: [
            (torch.zeros(1, h, cap, hd), torch.zeros(1, h, cap, hd)) for _ in range(n_layers)
        ],
    )


class TorchDecoder(Decoder):
    """A torch module ``forward(ids (1, t), caches, pos) -> logits (1, V)`` with
    per-layer K/V tensors preallocated by ``new_caches(capacity)``."""

    def __init__(self, module, new_caches: Callable):
        import torch

        self.torch, self.module, self.new_caches = torch, module, new_caches
        self.caches, self.pos = None, 0

    def start(self, capacity: int) -> None:
        self.caches, self.pos = self.new_caches(capacity), 0

    def _run(self, ids: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            logits = self.module(self.torch.from_numpy(ids), self.caches, self.pos)
        self.pos += ids.shape[1]
        return logits[0].numpy()

    def prefill(self, ids: np.ndarray) -> np.ndarray:
        return self._run(np.asarray(ids, np.int64)[None, :])

    def step(self, token: int) -> np.ndarray:
        return self._run(np.array([[token]], np.int64))


# -- where a rust decode step spends its time ---------------------------------------------


def profile_decode_step(model, prompt: Sequence[int], n_steps: int = 16) -> str:
    """Wall time of single-token steps of a ferroformer GPT or Llama split into the
    vocabulary head, the per-layer linears, attention (cache write, RoPE, kernel,
    head reshapes), norms + activation, and the rest (embeddings, residual adds,
    argmax, Python dispatch), by timing the forwards of this model's own module
    instances (the timers add a little overhead of their own)."""
    spent: Dict[str, float] = {}
    head = model.head if hasattr(model, "head") else model.lm_head
    final_norm = model.ln_f if hasattr(model, "ln_f") else model.norm
    lin_key, head_key, attn_key, act_key = (
        "per-layer linears",
        "vocabulary head (GEMV)",
        "attention (cache write, rope, kernel, reshapes)",
        "norms + activation",
    )

    def wrap(module, key, inner_keys=()):
        inner = module.forward

        def timed_forward(*a, **kw):
            before = {k: spent.get(k, 0.0) for k in inner_keys}
            t0 = time.perf_counter()
            out = inner(*a, **kw)
            dt = time.perf_counter() - t0
            # the time of nested timed modules is theirs, not this one's
            dt -= sum(spent.get(k, 0.0) - before[k] for k in inner_keys)
            spent[key] = spent.get(key, 0.0) + dt
            return out

        object.__setattr__(module, "forward", timed_forward)

    wrap(head, head_key)
    wrap(final_norm, act_key)
    linears = []
    for blk in model.blocks:
        linears += [blk.attn.qkv, blk.attn.proj, blk.ff.fc1, blk.ff.fc2]
        for lin in linears[-4:]:
            wrap(lin, lin_key)
        wrap(blk.attn, attn_key, (lin_key,))
        wrap(blk.ff, act_key, (lin_key,))
        wrap(blk.ln1, act_key)
        wrap(blk.ln2, act_key)
    dec = FerroDecoder(model)
    try:
        greedy(dec, prompt, 4)  # warm-up
        dec.start(len(prompt) + n_steps + 1)
        dec.prefill(np.asarray(prompt, np.int64))
        spent.clear()
        t0 = time.perf_counter()
        tok = int(prompt[-1])
        for _ in range(n_steps):
            tok = int(np.argmax(dec.step(tok)))
        total = time.perf_counter() - t0
    finally:
        for m in model.modules():
            m.__dict__.pop("forward", None)
    spent["rest (embeddings, residuals, argmax, Python)"] = total - sum(spent.values())
    lines = [
        f"rust decode step ({type(model).__name__}), mean of {n_steps} steps: "
        f"{total / n_steps * 1e3:.2f} ms",
        "| part | ms/step | share |",
        "|---|---:|---:|",
    ]
    for k, v in sorted(spent.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {k} | {v / n_steps * 1e3:.2f} | {v / total:.0%} |")
    mb = {
        head_key: head.weight.data.nbytes / 1e6,
        lin_key: sum(lin.weight.data.nbytes for lin in linears) / 1e6,
    }
    lines.append(
        f"weights read per token: head {mb[head_key]:.0f} MB, per-layer linears "
        f"{mb[lin_key]:.0f} MB; effective bandwidth: "
        + ", ".join(
            f"{k} {mb[k] / 1e3 / (spent[k] / n_steps):.1f} GB/s" for k in mb if spent.get(k)
        )
    )
    return "\n".join(lines)


# -- the memory-bandwidth ceiling -------------------------------------------------------


def bandwidth_bound(model, repeats: int = 5) -> str:
    """The decode speed that reading every weight once per token allows at the
    fastest rate at which this machine streams a matrix out of cache: a one-row
    ``x @ W.T`` over a 400 MB W (several times any L3), by NumPy's BLAS and by
    ferroformer, the faster of the two. The weights read per token are all of
    the model's parameters but the position table (one row of it is read)."""
    k = 768
    w = np.random.default_rng(1).standard_normal((400_000_000 // (4 * k), k), dtype=np.float32)
    x = np.ones((1, k), np.float32)
    rust = ff.backend("rust")
    rates = {}
    for name, fn in (
        ("numpy", lambda: x @ w.T),
        ("ferroformer", lambda: rust.matmul(x, w, trans_b=True)),
    ):
        fn()
        best = min(_timed(fn) for _ in range(repeats))
        rates[name] = w.nbytes / best / 1e9
    per_token = sum(p.data.nbytes for n, p in model.named_parameters() if not n.startswith("wpe."))
    best_rate = max(rates.values())
    return (
        f"memory bandwidth: one-row x @ W.T over a {w.nbytes / 1e6:.0f} MB W streams at "
        + ", ".join(f"{n} {r:.1f} GB/s" for n, r in rates.items())
        + f"; the weights read per token ({per_token / 1e6:.0f} MB) at {best_rate:.1f} GB/s "
        f"bound decoding at {best_rate * 1e9 / per_token:.1f} tokens/s"
    )


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# -- main -------------------------------------------------------------------------------


def run_arguments(
    doc: str, *, new_tokens: str, numpy_tokens: str, repeat: str, small: str, profile: str
):
    """The argument parser of a decode bench, with what every one of them takes:
    --threads, --repeat, --new-tokens (default 64), --numpy-tokens (default 16),
    --small, --no-numpy, --no-torch and --profile; the strings are their help texts."""
    p = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--threads",
        type=int,
        default=default_threads(),
        help="threads for every contender (default: the CPUs this process may use)",
    )
    p.add_argument("--repeat", type=int, default=2, help=f"{repeat} (default 2)")
    p.add_argument("--new-tokens", type=int, default=64, help=f"{new_tokens} (default 64)")
    p.add_argument("--numpy-tokens", type=int, default=16, help=f"{numpy_tokens} (default 16)")
    p.add_argument("--small", action="store_true", help=small)
    p.add_argument("--no-numpy", action="store_true", help="skip the numpy backend")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch even when it imports")
    p.add_argument("--profile", action="store_true", help=profile)
    return p


def main(argv=None) -> None:
    p = run_arguments(
        __doc__,
        new_tokens="greedy tokens to generate",
        numpy_tokens="tokens for the (slow) numpy backend",
        repeat="rounds over the contenders; the best prefill and decode of each",
        small="a tiny model, for a quick check",
        profile="also split a rust decode step into head / linears / attention / rest",
    )
    p.add_argument("--prompt-len", type=int, default=128, help="random prompt length (default 128)")
    p.add_argument(
        "--no-bound",
        action="store_true",
        help="skip measuring the memory-bandwidth ceiling (a 400 MB matrix)",
    )
    args = p.parse_args(argv)
    if args.new_tokens < 2:
        p.error("--new-tokens must be >= 2 (one from the prefill, the rest timed as decode)")
    if "rust" not in ff.available_backends():
        p.error("the rust backend is not available (build the extension first)")

    cfg = dict(TINY if args.small else GPT2_SMALL)
    if args.prompt_len + args.new_tokens > cfg["max_seq_len"]:
        p.error(f"--prompt-len + --new-tokens exceeds max_seq_len {cfg['max_seq_len']}")
    notes = set_threads(args.threads)
    print(machine_info(notes))
    print(
        f"# GPT {cfg}, fp32, random weights (rng=0), batch 1, prompt {args.prompt_len} "
        f"random tokens (seed 0), {args.new_tokens} new tokens greedy\n",
        flush=True,
    )

    prompt = np.random.default_rng(0).integers(0, cfg["vocab_size"], args.prompt_len).tolist()
    model = GPT(**cfg, backend="rust", rng=0)
    contenders = {"ferroformer rust": (FerroDecoder(model, "rust"), args.new_tokens)}
    torch = None if args.no_torch else import_torch()
    if torch is not None:
        contenders["torch"] = (torch_gpt(model.state_dict(), cfg), args.new_tokens)
    else:
        print("torch: skipped (" + ("--no-torch" if args.no_torch else "not installed") + ")")
    if not args.no_numpy:
        n = max(2, min(args.numpy_tokens, args.new_tokens))
        contenders["ferroformer numpy"] = (FerroDecoder(model, "numpy"), n)
    runs = measure(contenders, prompt, args.repeat)
    model.to("rust")
    print()
    by = {r.name: r for r in runs}
    ref = by.get("torch") or by.get("ferroformer rust")
    for r in runs:
        if r is not ref:
            print(compare_tokens(r, ref))
    print()
    print(table(runs, "torch" if "torch" in by else None))
    if not args.no_bound and not args.small:
        print()
        print(bandwidth_bound(model))
    if args.profile:
        print()
        print(profile_decode_step(model, prompt))


if __name__ == "__main__":
    main()
