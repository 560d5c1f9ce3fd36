"""Flash attention on the rust backend: peak memory of a long forward, and
timings against a composed NumPy implementation.

    pytest benches/bench_attention_memory.py      # the memory bound
    python benches/bench_attention_memory.py      # prints timings too

The memory check runs in a fresh interpreter, started from a small parent
(a child inherits its parent's peak RSS as ru_maxrss), so that ru_maxrss
sees only that forward: its growth must stay under 2x the bytes of q, k, v and o,
i.e. no (T, T) scores and only O(block) scratch per thread.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

PROBE = """
import json, resource, sys
import numpy as np
import ferroformer as ff
ops = ff.backend("rust")
b, h, t, d = map(int, sys.argv[1:])
rng = np.random.default_rng(0)
q, k, v = (np.empty((b, h, t, d), dtype=np.float32) for _ in range(3))
for x in (q, k, v):  # head by head, so that no temporary raises the peak
    for row in x.reshape(b * h, t, d):
        row[...] = rng.standard_normal((t, d), dtype=np.float32)
ops.attention_forward(q[:, :, :64].copy(), k[:, :, :64].copy(), v[:, :, :64].copy(), causal=True)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
o, lse = ops.attention_forward(q, k, v, causal=True)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth": (after - before) * 1024, "qkvo": 4 * q.nbytes}))
"""


def forward_memory(b=1, h=8, t=16384, d=64):
    """(peak RSS growth in bytes during one forward, bytes of q, k, v, o)."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(b), str(h), str(t), str(d)],
        check=True,
        capture_output=True,
        text=True,
    )
    r = json.loads(out.stdout)
    return r["growth"], r["qkvo"]


def test_forward_memory_is_linear():
    growth, qkvo = forward_memory()
    assert growth < 2 * qkvo, f"forward grew RSS by {growth / 2**20:.0f} MiB"


def numpy_attention(q, k, v, d_o, scale, backward):
    """Composed float32 NumPy attention (full scores), causal."""
    t = q.shape[2]
    s = (q @ k.transpose(0, 1, 3, 2)) * scale
    s = np.where(np.tri(t, dtype=bool), s, -np.inf)
    s -= s.max(-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(-1, keepdims=True)
    o = p @ v
    if not backward:
        return o
    dp = d_o @ v.transpose(0, 1, 3, 2)
    ds = p * (dp - (d_o * o).sum(-1, keepdims=True)) * scale
    return ds @ k, ds.transpose(0, 1, 3, 2) @ q, p.transpose(0, 1, 3, 2) @ d_o


def best_ms(f, repeat=7):
    from ferroformer.bench import call_times  # ferroformer only in main's process (see main)

    return 1e3 * min(call_times(f, repeat))


def main():
    import ferroformer as ff

    ops = ff.backend("rust")

    # First, while this process is small: Linux hands a child the parent's
    # peak RSS as its starting ru_maxrss, which would hide the growth.
    growth, qkvo = forward_memory()
    rng = np.random.default_rng(0)
    b, h, t, d = 4, 12, 1024, 64
    q, k, v, d_o = (rng.standard_normal((b, h, t, d), dtype=np.float32) for _ in range(4))
    sc = d**-0.5

    def fwd():
        return ops.attention_forward(q, k, v, causal=True, scale=sc)

    def fwd_bwd():
        o, lse = fwd()
        return ops.attention_backward(d_o, q, k, v, o, lse, causal=True, scale=sc)

    rows = {
        "rust fwd": best_ms(fwd),
        "rust fwd+bwd": best_ms(fwd_bwd),
        "numpy fwd": best_ms(lambda: numpy_attention(q, k, v, d_o, sc, False), 3),
        "numpy fwd+bwd": best_ms(lambda: numpy_attention(q, k, v, d_o, sc, True), 3),
    }
    kc, vc = (rng.standard_normal((1, 12, 1024, 64), dtype=np.float32) for _ in range(2))
    q1 = rng.standard_normal((1, 12, 1, 64), dtype=np.float32)
    rows["rust decode Tq=1 Tk=1024 H=12"] = best_ms(
        lambda: ops.attention_forward(q1, kc, vc, causal=True, scale=sc), 50
    )
    print(f"threads {ff.get_num_threads()}, simd {ff.simd_level()}")
    print(f"B={b} H={h} T={t} D={d} causal:")
    for name, ms in rows.items():
        print(f"  {name:32s} {ms:9.2f} ms")
    print(f"  numpy / rust fwd      {rows['numpy fwd'] / rows['rust fwd']:.1f}x")
    print(f"  numpy / rust fwd+bwd  {rows['numpy fwd+bwd'] / rows['rust fwd+bwd']:.1f}x")
    print(
        f"forward B=1 H=8 T=16384 D=64: peak RSS growth {growth / 2**20:.0f} MiB "
        f"= {growth / qkvo:.2f}x bytes(q, k, v, o)"
    )


if __name__ == "__main__":
    main()
