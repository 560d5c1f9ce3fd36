"""The kernel thread pool from several Python threads: calls from any thread, after
the thread that first built the pool has exited, and across set_num_threads,
run and give the same results."""

import subprocess
import sys

import pytest

import ferroformer as ff

pytestmark = pytest.mark.skipif(
    "rust" not in ff.available_backends(), reason="needs the rust backend"
)

SCRIPT = r"""
import threading
import numpy as np
from ferroformer import _native as N

rng = np.random.default_rng(0)
a = rng.standard_normal((300, 200)).astype(np.float32)
b = rng.standard_normal((200, 170)).astype(np.float32)
x = rng.standard_normal((1, 64)).astype(np.float32)
want = a.astype(np.float64) @ b

done = []

def check():
    got = N.matmul(a, b, False, False)
    assert np.abs(got - want).max() < 1e-3, "matmul"
    assert np.array_equal(N.relu_forward(x), np.maximum(x, 0)), "relu"
    done.append(1)

# the pool is built by a thread that then exits
t = threading.Thread(target=check); t.start(); t.join()
check()                                              # the main thread afterwards
threads = [threading.Thread(target=check) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
N.set_num_threads(1); check(); N.set_num_threads(2); check()
assert len(done) == 8, f"{8 - len(done)} checks failed"
print("ok")
"""


def test_pool_serves_every_thread():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


SMALL_SCRIPT = r"""
import os
import numpy as np
from ferroformer import _native as N

def threads_named(prefix):
    names = []
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/comm") as f:
            names.append(f.read().strip())
    return sum(n.startswith(prefix) for n in names)

rng = np.random.default_rng(1)
# either side of the size up to which calls skip the pool (32768 elements)
for n in (1, 768, 32768, 32769, 70001):
    x = rng.standard_normal((1, n)).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    y, mean, rstd = N.layernorm_forward(x, g, b, 1e-5)
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean()) / np.sqrt(x64.var() + 1e-5) * g + b
    assert np.abs(y - ref).max() < 1e-4, ("layernorm", n)
    ref = 0.5 * x64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64 ** 3)))
    assert np.abs(N.gelu_forward(x, "tanh") - ref).max() < 1e-5, ("gelu", n)
w = rng.standard_normal((40, 30)).astype(np.float32)
v = rng.standard_normal((3, 30)).astype(np.float32)
assert np.abs(N.matmul(v, w, False, True) - v.astype(np.float64) @ w.T).max() < 1e-4
# small calls ran on this thread: rayon's global pool has one idle worker at most
assert threads_named("ferroformer-serial") <= 1, threads_named("ferroformer-serial")
print("ok")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/task")
def test_small_calls_skip_the_pool():
    out = subprocess.run(
        [sys.executable, "-c", SMALL_SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
