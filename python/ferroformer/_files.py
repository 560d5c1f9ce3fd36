"""Reading files that may be damaged or hostile: every reader in ferroformer
(checkpoints, pretrained safetensors, config and tokenizer JSON, GGUF) goes
through these checks before it trusts, or allocates for, anything a file says.

    f, size = open_regular(path, "checkpoint")      # FileNotFoundError / ValueError, never blocks
    cfg = read_json(path, "config", max_bytes=1 << 20)
    header, meta, body = read_safetensors(path, "weights file")   # header checked, then the data

- Only regular files are opened: a FIFO, a socket, a device (``/dev/zero``,
  ``/dev/stdin``) or a directory is refused after ``os.stat`` and never opened
  (the descriptor is opened non-blocking and checked again with ``fstat``, so
  a path swapped for a FIFO in between cannot block either).
- A missing file is ``FileNotFoundError``; everything wrong inside a file is
  ``ValueError`` naming the file (and the tensor or key).
- JSON is bounded in size and nesting depth (a deeply nested document is a
  ValueError, not a RecursionError).
- A safetensors header is checked here, not by the library: its length
  against the file, every dtype, shape and data range, the ranges covering the
  data exactly once; tensors are then views of the data read from the file.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import struct
from typing import Dict

import numpy as np

MAX_JSON_DEPTH = 64
MAX_RANK = 16  # dimensions of one tensor; safetensors files hold at most a handful
MAX_SAFETENSORS_HEADER = 100 << 20  # the safetensors library's own limit

# safetensors dtype -> (bytes per element, NumPy dtype read from the file; None: converted)
SAFETENSORS_DTYPES = {
    "BOOL": (1, "?"),
    "U8": (1, "<u1"),
    "I8": (1, "<i1"),
    "U16": (2, "<u2"),
    "I16": (2, "<i2"),
    "U32": (4, "<u4"),
    "I32": (4, "<i4"),
    "U64": (8, "<u8"),
    "I64": (8, "<i8"),
    "F16": (2, "<f2"),
    "BF16": (2, None),
    "F32": (4, "<f4"),
    "F64": (8, "<f8"),
}


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO or pipe"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def check_regular(path, what: str = "file") -> os.stat_result:
    """``os.stat`` of ``path``: FileNotFoundError when it is missing, ValueError when it is
    not a regular file (FIFO, socket, device, directory). Opens nothing."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"no such {what}", path) from None
    except NotADirectoryError:
        raise FileNotFoundError(
            errno.ENOENT, f"no such {what} (a parent is not a directory)", path
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(
            f"{path}: not a valid {what}: {_kind(st.st_mode)}, not a regular file "
            f"(refused without opening it)"
        )
    return st


def open_regular(path, what: str = "file"):
    """(binary file object, size in bytes) of a regular file, checked before and after
    opening (see ``check_regular``); the caller closes it."""
    path = os.fspath(path)
    check_regular(path, what)
    flags = (
        os.O_RDONLY
        | getattr(os, "O_NONBLOCK", 0)
        | getattr(os, "O_CLOEXEC", 0)
        | getattr(os, "O_BINARY", 0)
    )
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"no such {what}", path) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path}: not a valid {what}: {_kind(st.st_mode)}, not a regular file")
        return os.fdopen(fd, "rb", buffering=0), st.st_size
    except BaseException:
        os.close(fd)
        raise


def read_exactly(f, n: int, path, what: str) -> bytearray:
    """n bytes from f into a fresh buffer; ValueError when the file ends first."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = f.readinto(view[got:])
        if not k:
            raise ValueError(
                f"{path}: not a valid {what}: truncated (the file ended {n - got} bytes early)"
            )
        got += k
    return buf


def read_bytes(path, what: str = "file", *, max_bytes: int) -> bytes:
    """The whole of a regular file of at most ``max_bytes`` bytes."""
    f, size = open_regular(path, what)
    with f:
        if size > max_bytes:
            raise ValueError(
                f"{path}: not a valid {what}: {size} bytes, more than the {max_bytes}-byte limit"
            )
        data = bytes(read_exactly(f, size, path, what))
        if f.read(1):
            raise ValueError(f"{path}: not a valid {what}: it grew while it was read")
    return data


def decode_utf8(data, where: str) -> str:
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{where}: not UTF-8 text ({e})") from None


def read_text(path, what: str = "file", *, max_bytes: int) -> str:
    """A regular file's UTF-8 text (ValueError when it is not UTF-8)."""
    return decode_utf8(
        read_bytes(path, what, max_bytes=max_bytes), f"{os.fspath(path)}: not a valid {what}"
    )


def json_depth(obj, limit: int = MAX_JSON_DEPTH) -> int:
    """How deep [ and { nest in a parsed JSON value (0 for a scalar), walked without
    recursion; stops counting once past ``limit``."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict):
            children = o.values()
        elif isinstance(o, list):
            children = o
        else:
            continue
        deepest = max(deepest, d)
        if d > limit:
            break
        stack.extend((c, d + 1) for c in children if isinstance(c, (dict, list)))
    return deepest


def loads_json(text, where: str, *, max_depth: int = MAX_JSON_DEPTH):
    """json.loads of a str or UTF-8 bytes, nested at most ``max_depth`` deep; every
    failure is a ValueError naming ``where``."""
    if not isinstance(text, str):
        text = decode_utf8(text, where)
    try:
        value = json.loads(text)  # its C parser stops at the recursion limit: RecursionError
    except RecursionError:
        raise ValueError(f"{where}: JSON nested more than {max_depth} deep") from None
    except ValueError as e:  # JSONDecodeError
        raise ValueError(f"{where}: not JSON ({e})") from None
    if text.count("[") + text.count("{") > max_depth and json_depth(value, max_depth) > max_depth:
        raise ValueError(f"{where}: JSON nested more than {max_depth} deep")
    return value


def read_json(path, what: str = "JSON file", *, max_bytes: int, max_depth: int = MAX_JSON_DEPTH):
    """A regular file's JSON, bounded in size and depth."""
    return loads_json(
        read_text(path, what, max_bytes=max_bytes),
        f"{os.fspath(path)}: not a valid {what}",
        max_depth=max_depth,
    )


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def bounded_numel(shape, limit: int) -> int:
    """prod(shape), or limit + 1 as soon as the product passes limit (no huge ints)."""
    if any(s == 0 for s in shape):
        return 0
    n = 1
    for s in shape:
        n *= s
        if n > limit:
            return limit + 1
    return n


def check_safetensors_header(header, body_size: int, where: str) -> Dict[str, tuple]:
    """{name: (dtype, shape tuple, (start, end))} of a parsed safetensors header after
    checking every entry against the ``body_size`` bytes of data that follow it: known
    dtype, a list of non-negative int dimensions whose product times the dtype's size
    is exactly the entry's range, ranges inside the data that cover it exactly once
    (no overlap, no hole, nothing left over). ValueError naming ``where`` and the tensor."""
    if not isinstance(header, dict):
        raise ValueError(f"{where}: the header is not a JSON object")
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not name:
            raise ValueError(f"{where}: a tensor has an empty name")
        if not (isinstance(info, dict) and set(info) == {"dtype", "shape", "data_offsets"}):
            raise ValueError(
                f"{where}: tensor {name!r} has a malformed entry (needs exactly "
                f"dtype, shape and data_offsets)"
            )
        dtype, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"{where}: tensor {name!r} has unknown dtype {dtype!r}")
        if not (
            isinstance(shape, list)
            and len(shape) <= MAX_RANK
            and all(is_int(s) and s >= 0 for s in shape)
        ):
            raise ValueError(f"{where}: tensor {name!r} has a malformed shape {shape!r:.200}")
        if not (
            isinstance(offs, list)
            and len(offs) == 2
            and all(is_int(o) for o in offs)
            and 0 <= offs[0] <= offs[1] <= body_size
        ):
            raise ValueError(
                f"{where}: tensor {name!r} has data offsets {offs!r:.200} outside "
                f"the {body_size} bytes of data in the file"
            )
        itemsize = SAFETENSORS_DTYPES[dtype][0]
        need = bounded_numel(shape, body_size) * itemsize
        if need != offs[1] - offs[0]:
            shown = "more than the file holds" if need > body_size * itemsize else f"{need} bytes"
            raise ValueError(
                f"{where}: tensor {name!r}: shape {shape} of {dtype} needs {shown}, "
                f"its data offsets hold {offs[1] - offs[0]}"
            )
        out[name] = (dtype, tuple(shape), (offs[0], offs[1]))
    end = 0
    for name, (_, _, (a, b)) in sorted(out.items(), key=lambda kv: kv[1][2]):
        if a < end:
            raise ValueError(f"{where}: tensor {name!r} data [{a}, {b}) overlaps another tensor's")
        if a > end:
            raise ValueError(f"{where}: the tensor data has a hole at bytes [{end}, {a})")
        end = b
    if end != body_size:
        raise ValueError(
            f"{where}: the header declares {end} bytes of tensor data, the file holds {body_size}"
        )
    return out


def check_string_metadata(header, where: str) -> Dict[str, str]:
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise ValueError(f"{where}: __metadata__ is not a mapping of strings to strings")
    return meta


def read_safetensors_header(
    f, size: int, path, what: str, max_header: int = MAX_SAFETENSORS_HEADER
):
    """(entries, metadata, header length) from an open safetensors file of ``size`` bytes,
    positioned at its start; reads only the header."""
    where = f"{path}: not a valid {what}"
    if size < 8:
        raise ValueError(
            f"{where}: {size} bytes, too short for a safetensors header "
            f"(truncated or not safetensors)"
        )
    (n,) = struct.unpack("<Q", read_exactly(f, 8, path, what))
    if n > size - 8 or n > max_header:
        raise ValueError(
            f"{where}: header length {n} exceeds the file ({size} bytes) or the "
            f"{max_header}-byte limit (truncated, damaged or not safetensors)"
        )
    if n < 2:
        raise ValueError(f"{where}: header length {n} is too short for a JSON object")
    raw = read_exactly(f, n, path, what)
    header = loads_json(raw, f"{where}: header")
    entries = check_safetensors_header(header, size - 8 - n, where)
    return entries, check_string_metadata(header, where), n


def _view(body, dtype: str, shape, a: int, b: int) -> np.ndarray:
    code = SAFETENSORS_DTYPES[dtype][1]
    if code is None:  # bfloat16: the high half of a float32
        raw = np.frombuffer(body, "<u2", (b - a) // 2, a).astype(np.uint32)
        return (raw << 16).view(np.float32).reshape(shape)
    arr = np.frombuffer(body, code, (b - a) // np.dtype(code).itemsize, a).reshape(shape)
    if not arr.flags.aligned:
        arr = arr.copy()
    return arr


def read_safetensors(
    path, what: str = "safetensors file", *, max_header: int = MAX_SAFETENSORS_HEADER
):
    """(tensors {name: np.ndarray}, metadata {str: str}) of a safetensors file. The header
    is checked (``check_safetensors_header``) before any data is read; arrays are
    writable views of one buffer of the file's data (BF16 converted to float32)."""
    path = os.fspath(path)
    f, size = open_regular(path, what)
    with f:
        entries, meta, n = read_safetensors_header(f, size, path, what, max_header)
        body = read_exactly(f, size - 8 - n, path, what)
    tensors = {
        name: _view(body, dtype, shape, a, b) for name, (dtype, shape, (a, b)) in entries.items()
    }
    return tensors, meta


__all__ = [
    "MAX_JSON_DEPTH",
    "SAFETENSORS_DTYPES",
    "bounded_numel",
    "check_regular",
    "check_safetensors_header",
    "json_depth",
    "loads_json",
    "open_regular",
    "read_bytes",
    "read_json",
    "read_safetensors",
    "read_text",
]
