"""Two builds of ferroformer, timed against each other in alternating processes.

A change must not slow the kernels down; on a shared, drifting machine the
only fair way to tell is to run the old and the new build in turn, many
times, and take each case's median per-pair ratio. Each build lives in its
own virtual environment (a wheel of the old commit installed into one, the
working tree into the other):

    python benches/bench_builds.py --base /work/venv-base/bin/python \\
        --new .venv/bin/python --rounds 7

Cases: the op table of ``python -m ferroformer bench`` (rust backend),
attention forward+backward, and decode-shaped calls (one-row product, the
cached attention decode step at head_dim 64 and 72). ``new/base`` below 1 is
a speed-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

# Runs inside each build's interpreter: times every case on the rust backend and
# prints {case: seconds} as JSON on the last line.
CHILD = r"""
import json, sys
import numpy as np
import ferroformer as ff
from ferroformer.bench import CASES
try:
    from ferroformer.bench import best_of
except ImportError:  # a build from before best_of was public
    from ferroformer.bench import _best_of as best_of

ops = ff.backend("rust")
rng = np.random.default_rng(0)
out = {}
for case in CASES:
    t = case.make(rng)
    out[f"{case.name} {case.size}"] = best_of(lambda: case.run(ops, t), 5)

def attn_case(b, h, t, d, causal=True):
    q, k, v = (rng.standard_normal((b, h, t, d), np.float32) for _ in range(3))
    do = rng.standard_normal((b, h, t, d), np.float32)
    def run():
        o, lse = ops.attention_forward(q, k, v, causal=causal)
        ops.attention_backward(do, q, k, v, o, lse, causal=causal)
    return run

out["attention fwd+bwd 2x12x512x64 causal"] = best_of(attn_case(2, 12, 512, 64), 5)

def decode_case(d, cap, used):
    q = rng.standard_normal((1, 12, 1, d), np.float32)
    k = rng.standard_normal((1, 12, cap, d), np.float32)
    v = rng.standard_normal((1, 12, cap, d), np.float32)
    return lambda: ops.attention_forward(q, k, v, causal=True, kv_len=used)

for d in (64, 72):
    for cap in (256, 16384):
        out[f"attention decode d{d} cap{cap} used200"] = best_of(decode_case(d, cap, 200), 5)

w = rng.standard_normal((2304, 768), np.float32)
x1 = rng.standard_normal((1, 768), np.float32)
out["linear 1x768 @ 2304x768.T"] = best_of(lambda: ops.linear_forward(x1, w), 5)
ln = rng.standard_normal((1, 768), np.float32)
g, b = np.ones(768, np.float32), np.zeros(768, np.float32)
out["layernorm 1x768 (call overhead)"] = best_of(lambda: ops.layernorm_forward(ln, g, b), 5)
print(json.dumps(out))
"""


def run_build(python: str) -> dict:
    proc = subprocess.run([python, "-c", CHILD], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"error: {python} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="python of the venv with the old build")
    p.add_argument("--new", required=True, help="python of the venv with the new build")
    p.add_argument("--rounds", type=int, default=5, help="pairs of runs (order alternates)")
    args = p.parse_args()
    ratios: dict = {}
    times: dict = {"base": {}, "new": {}}
    for r in range(args.rounds):
        order = ("base", "new") if r % 2 == 0 else ("new", "base")
        got = {}
        for which in order:
            time.sleep(0.5)  # let other processes' spinning threads settle
            got[which] = run_build(getattr(args, which))
        for case in got["base"]:
            if case in got["new"]:
                ratios.setdefault(case, []).append(got["new"][case] / got["base"][case])
                for which in ("base", "new"):
                    times[which].setdefault(case, []).append(got[which][case])
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    print(f"| case | base ms (best) | new ms (best) | new/base (median of {args.rounds} pairs) |")
    print("|---|---|---|---|")
    for case, rs in ratios.items():
        print(
            f"| {case} | {min(times['base'][case]) * 1e3:.4f} | {min(times['new'][case]) * 1e3:.4f} "
            f"| {statistics.median(rs):.3f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
