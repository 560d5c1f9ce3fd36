"""The kernel thread pool from several Python threads: calls from any thread, after
the thread that first built the pool has exited, and across set_num_threads,
run and give the same results."""

import subprocess
import sys

import pytest

import ferroformer as ff

pytestmark = pytest.mark.skipif("rust" not in ff.available_backends(), reason="needs the rust backend")

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
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
