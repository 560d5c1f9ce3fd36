"""Keeps glibc's malloc from handing every large temporary back to the kernel.

A training step allocates and frees the same large arrays (activations,
gradients: megabytes each) over and over. With glibc's defaults a freed
block at the top of the heap is trimmed and a block above the mmap threshold
is unmapped, so the next step's array of the same size starts on fresh pages,
and the first write to each page is a page fault that the kernel answers by
zeroing it. On a 2-core machine those faults cost a GELU over a (2048, 1536)
array more time than the arithmetic (9 ms instead of 2.7 ms).

``tune_malloc()`` raises the mmap threshold to its 32 MiB ceiling and the
trim threshold to 1 GiB, so freed memory is kept for reuse. It runs once
when ferroformer is imported on Linux with glibc; ``FERROFORMER_MALLOC_TUNING=0``
leaves the allocator alone. The cost is that a process keeps up to about
1 GiB of freed memory instead of returning it at once.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_SETTINGS = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 64 << 20))

applied = False


def tune_malloc() -> bool:
    """Applies the settings above; True when they took effect."""
    global applied
    if applied:
        return True
    if os.environ.get("FERROFORMER_MALLOC_TUNING", "1").strip() in ("0", "false", "no", "off"):
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = all(mallopt(param, value) == 1 for param, value in _SETTINGS)
    return applied
