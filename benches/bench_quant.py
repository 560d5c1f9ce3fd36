"""GB/s of the rust backend's quantized product straight from GGUF blocks, against this
machine's streaming bandwidth, float32 linear_forward of the same shape, and dequantize +
matmul (the NumPy reference), one process.

Run: python benches/bench_quant.py [--threads 2] [--repeats 7] [--types Q4_1,Q8_0,Q4_K,Q6_K]
     [--int8]
Not part of the test run (the pytest-benchmark test at the end runs under
``pytest benches/bench_quant.py``). Shapes are SmolLM2-135M's: in 576 -> out 576, 192, 1536,
1536 -> 576, and the 49152 x 576 vocabulary head (the K types only where in is a multiple
of 256, as in llama.cpp's mixes); one row (decode) and 128 rows (prefill).
GB/s counts the weight bytes streamed once per call; "of bw" divides by the measured
streaming rate (a numpy sum over a 512 MB array, the best of a few).
"""

from __future__ import annotations

import argparse
from statistics import median

import numpy as np

import ferroformer as ff
from ferroformer.bench import call_times
from ferroformer.quant.formats import block_format, dequantize

SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536), (49152, 576)]
ROWS = [1, 128]
TYPES = ["Q4_1", "Q8_0", "Q4_K", "Q6_K"]


def weight(name, out_f, in_f, rng):
    fmt = block_format(name)
    w = rng.integers(0, 256, (out_f * in_f // fmt.block_size, fmt.type_size), dtype=np.uint8)
    for at in fmt.half_offsets:
        w[:, at : at + 2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    return w.reshape(out_f, -1)


def timed(fn, repeats):
    return median(call_times(fn, repeats))


def bandwidth(nbytes=1 << 29):
    """Streaming read rate in GB/s: numpy sum of a large float32 array (best of 5)."""
    a = np.ones(nbytes // 4, np.float32)
    best = min(timed(lambda: a.sum(), 1) for _ in range(5))
    return nbytes / best / 1e9


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--types", default=",".join(TYPES))
    p.add_argument("--int8", action="store_true", help="also time the int8-activation mode")
    args = p.parse_args(argv)
    ff.set_num_threads(args.threads)
    ops = ff.backend("rust")
    rng = np.random.default_rng(0)
    bw = bandwidth()
    print(f"streaming bandwidth (numpy sum, 512 MB): {bw:.1f} GB/s; threads {args.threads}")
    print(
        f"{'type':5} {'out x in':>12} {'rows':>4} {'ms':>8} {'GB/s':>6} {'of bw':>6} "
        f"{'f32 ms':>8} {'vs f32':>6} {'deq+mm':>7}" + (f" {'int8 ms':>8}" if args.int8 else "")
    )
    for name in args.types.split(","):
        for out_f, in_f in SHAPES:
            if in_f % block_format(name).block_size:
                print(
                    f"{name:5} {out_f:>6}x{in_f:<5} skipped: in is not a whole number of "
                    f"{block_format(name).block_size}-value blocks"
                )
                continue
            w = weight(name, out_f, in_f, rng)
            wf = dequantize(w, name)
            for rows in ROWS:
                x = rng.standard_normal((rows, in_f)).astype(np.float32)
                ours = timed(lambda: ops.quantized_linear_forward(x, w, name), args.repeats)
                f32 = timed(lambda: ops.linear_forward(x, wf), args.repeats)
                deq = timed(lambda: x @ dequantize(w, name).T, max(1, args.repeats // 3))
                gbs = w.nbytes / ours / 1e9
                line = (
                    f"{name:5} {out_f:>6}x{in_f:<5} {rows:>4} {ours * 1e3:8.3f} {gbs:6.1f} "
                    f"{gbs / bw:6.0%} {f32 * 1e3:8.3f} {f32 / ours:5.2f}x {deq / ours:6.1f}x"
                )
                if args.int8:
                    i8 = timed(
                        lambda: ops.quantized_linear_forward(x, w, name, activations="int8"),
                        args.repeats,
                    )
                    line += f" {i8 * 1e3:8.3f}"
                print(line, flush=True)


def test_quantized_decode_head(benchmark):
    rng = np.random.default_rng(0)
    w = weight("Q4_1", 49152, 576, rng)
    x = rng.standard_normal((1, 576)).astype(np.float32)
    benchmark(ff.backend("rust").quantized_linear_forward, x, w, "Q4_1")


if __name__ == "__main__":
    main()
