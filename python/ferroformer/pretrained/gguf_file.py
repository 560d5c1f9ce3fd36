"""Reading GGUF files: metadata as plain Python values, tensors dequantised to
float32 (by the ``gguf`` package) in PyTorch's layout (``(out_features,
in_features)`` for weight matrices). ``read_header`` is the one parser of the
format's layout, for this float loader and quant.gguf_file's block one.

The file's structure is checked first (``check_gguf``), so that the parser
and the decoder can trust the counts and lengths they read (unchecked, an
array that claims 2**60 elements loops without end, a tensor whose data lies
past the end of the file is a short view). Checked: a regular file (never a
FIFO or device), the magic and version, every count and length against the
bytes left, keys and strings UTF-8, value types known, arrays nested at most
a few deep, no key or tensor twice, at most 4 dimensions of at least 1, a
known tensor type whose blocks divide the first dimension, data offsets
aligned, every tensor's data inside the file and no two overlapping. Every
failure is a ValueError naming the file (and the key or tensor); the parser
and the decoder then read the same open file, so the checked file is the one
read.

``llama_config_from_gguf`` maps a llama file's metadata onto ferroformer's
Llama config (``gguf_sizes`` the sizes every architecture states); they live
beside the reader so that both loaders (smollm's float one and
quant.gguf_file's block one) import them from here, not from each other.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from typing import Dict, List, Tuple

import numpy as np

from .._files import bounded_numel, open_regular
from .values import positive

WHAT = "GGUF file"
VERSIONS = (2, 3)
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ARRAY_NESTING = 4
_STRING, _ARRAY = 8, 9
# GGML tensor types stored as plain numbers: the numpy type of their elements
# (the others are blocks of bytes, shaped by the gguf package before decoding)
_PLAIN = {
    0: np.float32,
    1: np.float16,
    24: np.int8,
    25: np.int16,
    26: np.int32,
    27: np.int64,
    28: np.float64,
}
# GGUF scalar value types -> (struct format, bytes)
_SCALARS = {
    0: ("B", 1),
    1: ("b", 1),
    2: ("H", 2),
    3: ("h", 2),
    4: ("I", 4),
    5: ("i", 4),
    6: ("f", 4),
    7: ("?", 1),
    10: ("Q", 8),
    11: ("q", 8),
    12: ("d", 8),
}


def _gguf():
    try:
        import gguf
    except ImportError as e:
        raise ImportError("reading GGUF files needs the gguf package: pip install gguf") from e
    return gguf


_U64 = struct.Struct("<Q")


class _Cursor:
    """Little-endian reads from a buffer; each refuses to pass the end (truncated)."""

    def __init__(self, buf, where: str):
        self.buf, self.size, self.pos, self.where = buf, len(buf), 0, where

    def bad(self, what) -> ValueError:
        return ValueError(f"{self.where}: {what}")

    def left(self) -> int:
        return self.size - self.pos

    def need(self, n: int, what: str) -> None:
        if n > self.left():
            raise self.bad(
                f"truncated: {what} needs {n} bytes at offset {self.pos}, {self.left()} are left"
            )

    def unpack(self, fmt: str, n: int, what: str):
        self.need(n, what)
        (v,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += n
        return v

    def string(self, what: str) -> str:
        n = self.unpack("Q", 8, f"the length of {what}")
        self.need(n, what)
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.bad(f"{what} is not UTF-8 ({e})") from None

    def new_name(self, seen: set, kind: str, what: str) -> str:
        """A string that is neither empty nor in ``seen`` (added to it): a key or a tensor name."""
        name = self.string(what)
        if not name or name in seen:
            raise self.bad(f"{kind} {name!r:.80} is empty or given twice")
        seen.add(name)
        return name

    def strings(self, count: int, what: str) -> None:
        """Skips over ``count`` strings (a vocabulary: tens of thousands), checking each
        length and that each is UTF-8, in one loop of local variables."""
        buf, pos, size = self.buf, self.pos, self.size
        length = _U64.unpack_from
        for i in range(count):
            if size - pos < 8:
                self.pos = pos
                self.need(8, f"the length of {what}[{i}]")
            (n,) = length(buf, pos)
            pos += 8
            if n > size - pos:
                self.pos = pos
                self.need(n, f"{what}[{i}]")
            try:
                buf[pos : pos + n].decode("utf-8")
            except UnicodeDecodeError as e:
                raise self.bad(f"{what}[{i}] is not UTF-8 ({e})") from None
            pos += n
        self.pos = pos

    def value(self, vtype: int, what: str, depth: int = 0) -> None:
        """Skips over one value of type vtype, checking its lengths and strings."""
        if vtype in _SCALARS:
            n = _SCALARS[vtype][1]
            self.need(n, what)
            self.pos += n
        elif vtype == _STRING:
            self.string(what)
        elif vtype == _ARRAY:
            if depth >= MAX_ARRAY_NESTING:
                raise self.bad(f"{what}: arrays nested more than {MAX_ARRAY_NESTING} deep")
            itype = self.unpack("I", 4, f"the element type of {what}")
            count = self.unpack("Q", 8, f"the length of {what}")
            if itype in _SCALARS:
                n = _SCALARS[itype][1]
                if count > self.left() // n:
                    raise self.bad(
                        f"{what} claims {count} elements of {n} bytes, more than "
                        f"the {self.left()} bytes left in the file"
                    )
                self.pos += count * n
                return
            if itype not in (_STRING, _ARRAY):
                raise self.bad(f"{what} has unknown element type {itype}")
            least = 8 if itype == _STRING else 12
            if count > self.left() // least:
                raise self.bad(
                    f"{what} claims {count} elements, more than the "
                    f"{self.left()} bytes left in the file can hold"
                )
            if itype == _STRING:
                self.strings(count, what)
                return
            for i in range(count):
                self.value(itype, f"{what}[{i}]", depth + 1)
        else:
            raise self.bad(f"{what} has unknown value type {vtype}")


def check_gguf(buf, where: str) -> Tuple[int, int]:
    """(number of key-value pairs, number of tensors) of a GGUF file in ``buf``
    (bytes or an mmap) after checking its whole structure; ValueError naming ``where``."""
    gguf = _gguf()
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    c = _Cursor(buf, where)
    c.need(4, "the magic")
    if bytes(buf[:4]) != b"GGUF":
        raise c.bad(f"wrong magic {bytes(buf[:4])!r}, expected b'GGUF'")
    c.pos = 4
    version = c.unpack("I", 4, "the version")
    if version not in VERSIONS:
        raise c.bad(
            f"version {version} (a big-endian file reads as a huge one); "
            f"readable versions are {VERSIONS}"
        )
    n_tensors = c.unpack("Q", 8, "the tensor count")
    n_kv = c.unpack("Q", 8, "the key-value count")
    if n_kv > c.left() // 13 or n_tensors > c.left() // 24:
        raise c.bad(
            f"it claims {n_kv} key-value pairs and {n_tensors} tensors, more than "
            f"its {c.size} bytes can hold"
        )
    keys, alignment = set(), gguf.GGUF_DEFAULT_ALIGNMENT
    for i in range(n_kv):
        key = c.new_name(keys, "key", f"key {i}")
        vtype = c.unpack("I", 4, f"the type of {key}")
        start = c.pos
        c.value(vtype, f"metadata {key}")
        if key == "general.alignment":
            if vtype != 4:
                raise c.bad("general.alignment is not a uint32")
            (alignment,) = struct.unpack_from("<I", buf, start)
            if alignment == 0 or alignment & (alignment - 1) or alignment > 1 << 20:
                raise c.bad(f"general.alignment {alignment} is not a power of two up to 2**20")
    infos, names = [], set()
    for i in range(n_tensors):
        name = c.new_name(names, "tensor name", f"the name of tensor {i}")
        n_dims = c.unpack("I", 4, f"the rank of tensor {name}")
        if n_dims > MAX_DIMS:
            raise c.bad(f"tensor {name} has {n_dims} dimensions, GGUF allows {MAX_DIMS}")
        dims = [c.unpack("Q", 8, f"the shape of tensor {name}") for _ in range(n_dims)]
        raw_type = c.unpack("I", 4, f"the type of tensor {name}")
        offset = c.unpack("Q", 8, f"the data offset of tensor {name}")
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(raw_type)]
        except (ValueError, KeyError):
            raise c.bad(f"tensor {name} has unknown type {raw_type}") from None
        if any(d < 1 for d in dims) or (dims and dims[0] % block):
            raise c.bad(
                f"tensor {name} has shape {dims} (fastest axis first), not positive "
                f"or not a multiple of its {block}-element blocks"
            )
        numel = bounded_numel(dims, c.size * block)
        n_bytes = numel // block * type_size
        if n_bytes > c.size:
            raise c.bad(
                f"tensor {name} of shape {dims} needs more bytes than the whole file ({c.size})"
            )
        if offset % alignment:
            raise c.bad(
                f"tensor {name} data offset {offset} is not a multiple of the alignment {alignment}"
            )
        infos.append((offset, n_bytes, name))
    data_start = -(-c.pos // alignment) * alignment
    end = 0
    for offset, n_bytes, name in sorted(infos):
        if offset < end:
            raise c.bad(f"tensor {name} data at offset {offset} overlaps the tensor before it")
        end = offset + n_bytes
        if data_start + end > c.size:
            raise c.bad(
                f"tensor {name} data [{data_start + offset}, {data_start + end}) lies "
                f"past the end of the file ({c.size} bytes; truncated?)"
            )
    return n_kv, n_tensors


class _Reader:
    """Reads the values of GGUF bytes that ``check_gguf`` has passed, so that every
    length is known to fit and every string to be UTF-8."""

    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def scalar(self, fmt: str):
        (v,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return v

    def string(self) -> str:
        n = self.scalar("Q")
        s = self.buf[self.pos : self.pos + n].decode("utf-8")
        self.pos += n
        return s

    def value(self, vtype: int):
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype][0])
        if vtype == _STRING:
            return self.string()
        itype, count = self.scalar("I"), self.scalar("Q")
        if itype == _STRING:  # a vocabulary: one tight loop, no call per string
            buf, pos, out = self.buf, self.pos, []
            length = _U64.unpack_from
            append = out.append
            for _ in range(count):
                (n,) = length(buf, pos)
                pos += 8
                append(buf[pos : pos + n].decode("utf-8"))
                pos += n
            self.pos = pos
            return out
        if itype in _SCALARS:  # numbers in one read
            dtype = np.dtype("<" + _SCALARS[itype][0])
            a = np.frombuffer(self.buf, dtype, count, self.pos)
            self.pos += count * dtype.itemsize
            return a.tolist()
        return [self.value(itype) for _ in range(count)]


def read_header(buf) -> Tuple[Dict[str, object], List[Tuple[str, Tuple[int, ...], int, int]], int]:
    """(metadata as Python values, the tensors as (name, shape slowest axis first, GGML
    type, offset in the data section), where the data section starts) of GGUF bytes
    ``buf`` that ``check_gguf`` has passed: the one parser of the format's layout, for
    both loaders."""
    r = _Reader(buf)
    r.pos = 8
    n_tensors, n_kv = r.scalar("Q"), r.scalar("Q")
    meta = {}
    for _ in range(n_kv):
        key = r.string()
        meta[key] = r.value(r.scalar("I"))
    tensors = []
    for _ in range(n_tensors):
        name = r.string()
        dims = tuple(r.scalar("Q") for _ in range(r.scalar("I")))
        tensors.append((name, tuple(reversed(dims)), r.scalar("I"), r.scalar("Q")))
    alignment = int(meta.get("general.alignment", 32))
    return meta, tensors, -(-r.pos // alignment) * alignment


def read_gguf(path) -> Tuple[Dict, Dict[str, np.ndarray]]:
    """(metadata, tensors) of a GGUF file; FileNotFoundError for a missing file,
    ValueError (naming the file) for one that is not a regular file or is damaged.
    The tensors are decoded by the gguf package from a read-only map of the file."""
    gguf = _gguf()
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    path = os.fspath(path)
    where = f"{path}: not a valid {WHAT}"
    f, size = open_regular(path, WHAT)
    with f:
        if size < 24:
            raise ValueError(
                f"{where}: {size} bytes, too short for a GGUF header (truncated or not GGUF)"
            )
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            check_gguf(buf, where)
            meta, infos, data_start = read_header(buf)
        data = np.memmap(f, np.uint8, mode="r")  # its own map: stays valid once f is closed
    tensors = {}
    for name, shape, raw_type, offset in infos:
        qtype = GGMLQuantizationType(raw_type)
        block, type_size = GGML_QUANT_SIZES[qtype]
        start = data_start + offset
        raw = data[start : start + math.prod(shape) // block * type_size]
        try:
            if qtype in _PLAIN:
                raw = raw.view(_PLAIN[qtype]).reshape(shape)
            else:
                raw = raw.reshape(gguf.quants.quant_shape_to_byte_shape(shape, qtype))
            values = gguf.quants.dequantize(raw, qtype)
        except Exception as e:
            raise ValueError(f"{where}: tensor {name} ({qtype.name}) cannot be decoded: {e}") from e
        values = np.asarray(values, np.float32)
        if values.size != bounded_numel(shape, values.size):
            raise ValueError(
                f"{where}: tensor {name} holds {values.size} values, its shape {shape} needs more"
            )
        tensors[name] = values.reshape(shape)
    return meta, tensors


def vocab_size(meta: Dict, source: str) -> int:
    """The length of a GGUF file's token list; ValueError (naming ``source``) without one."""
    tokens = meta.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens:
        raise ValueError(f"{source}: metadata tokenizer.ggml.tokens must be a non-empty list")
    return len(tokens)


# per architecture: (config key, metadata key after "<arch>.") of each size it states
_SIZES = {
    "llama": (
        ("d_model", "embedding_length"),
        ("n_heads", "attention.head_count"),
        ("n_kv_heads", "attention.head_count_kv"),
        ("n_layers", "block_count"),
        ("d_ff", "feed_forward_length"),
    ),
    "gpt2": (
        ("d_model", "embedding_length"),
        ("n_heads", "attention.head_count"),
        ("n_layers", "block_count"),
        ("d_ff", "feed_forward_length"),
    ),
}


def gguf_sizes(meta: Dict, arch: str, max_seq_len: int, source: str) -> dict:
    """The config's vocab_size, max_seq_len and the sizes of an ``arch`` file's metadata
    (``_SIZES``), read in that order; ValueError (naming ``source``) for a size that is
    missing or not a positive int."""
    config = dict(vocab_size=vocab_size(meta, source), max_seq_len=max_seq_len)
    for ours, theirs in _SIZES[arch]:
        key = f"{arch}.{theirs}"
        config[ours] = positive(meta.get(key), int, f"metadata {key}", source)
    return config


def llama_config_from_gguf(meta: Dict, tensors: Dict, max_seq_len: int, source: str) -> dict:
    """ferroformer Llama config of a llama GGUF file's metadata; ValueError (naming
    ``source``) for a missing key or a value of the wrong type."""
    if meta.get("general.architecture") != "llama":
        raise ValueError(
            f"{source}: expected a llama GGUF, got {meta.get('general.architecture')!r:.80}"
        )

    def get(key):
        return float(positive(meta.get("llama." + key), float, f"metadata llama.{key}", source))

    return dict(
        gguf_sizes(meta, "llama", max_seq_len, source),
        rope_base=get("rope.freq_base"),
        norm_eps=get("attention.layer_norm_rms_epsilon"),
        tie_embeddings="output.weight" not in tensors,
    )
