"""Reading GGUF files through the ``gguf`` package: metadata as plain
Python values, tensors dequantised to float32 in PyTorch's layout
(``(out_features, in_features)`` for weight matrices).

The file's structure is checked here first (``check_gguf``), because the
package's reader trusts the counts and lengths it reads: an array that claims
2**60 elements loops without end, a tensor whose data lies past the end of
the file is a short view. Checked: a regular file (never a FIFO or device),
the magic and version, every count and length against the bytes left, keys
and strings UTF-8, value types known, arrays nested at most a few deep, no
key or tensor twice, at most 4 dimensions of at least 1, a known tensor type
whose blocks divide the first dimension, data offsets aligned, every tensor's
data inside the file and no two overlapping. Every failure is a ValueError
naming the file (and the key or tensor); the reader then maps the same open
file, so the checked file is the one read.

``llama_config_from_gguf`` maps a llama file's metadata onto ferroformer's
Llama config; it lives beside the reader so that both loaders (smollm's float
one and quant.gguf_file's block one) import it from here, not from each other.
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Dict, Tuple

import numpy as np

from .._files import bounded_numel, open_regular
from .values import positive

WHAT = "GGUF file"
VERSIONS = (2, 3)
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ARRAY_NESTING = 4
_STRING, _ARRAY = 8, 9
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


def read_gguf(path) -> Tuple[Dict, Dict[str, np.ndarray]]:
    """(metadata, tensors) of a GGUF file; FileNotFoundError for a missing file,
    ValueError (naming the file) for one that is not a regular file or is damaged."""
    gguf = _gguf()
    path = os.fspath(path)
    where = f"{path}: not a valid {WHAT}"
    f, size = open_regular(path, WHAT)
    with f:
        if size < 24:
            raise ValueError(
                f"{where}: {size} bytes, too short for a GGUF header (truncated or not GGUF)"
            )
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            n_kv, n_tensors = check_gguf(buf, where)
        try:
            reader = gguf.GGUFReader(f)  # np.memmap of the same open file
        except Exception as e:  # the reader raises many kinds on a damaged file
            raise ValueError(f"{where}: the gguf reader refused it ({e})") from e
    n_fields = sum(not k.startswith("GGUF.") for k in reader.fields)
    if (len(reader.tensors), n_fields) != (n_tensors, n_kv):
        raise ValueError(
            f"{where}: the gguf reader found {len(reader.tensors)} tensors and "
            f"{n_fields} keys, the header declares {n_tensors} and {n_kv}"
        )
    meta = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            meta[key] = field.contents()
        except Exception as e:
            raise ValueError(f"{where}: metadata field {key} is damaged: {e}") from e
    tensors = {}
    for t in reader.tensors:
        # GGUF lists the fastest axis first
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))
        try:
            data = gguf.quants.dequantize(t.data, t.tensor_type)
        except Exception as e:
            raise ValueError(
                f"{where}: tensor {t.name} ({t.tensor_type.name}) cannot be decoded: {e}"
            ) from e
        data = np.asarray(data, np.float32)
        if data.size != bounded_numel(shape, data.size):
            raise ValueError(
                f"{where}: tensor {t.name} holds {data.size} values, its shape {shape} needs more"
            )
        tensors[t.name] = data.reshape(shape)
    return meta, tensors


def vocab_size(meta: Dict, source: str) -> int:
    """The length of a GGUF file's token list; ValueError (naming ``source``) without one."""
    tokens = meta.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens:
        raise ValueError(f"{source}: metadata tokenizer.ggml.tokens must be a non-empty list")
    return len(tokens)


def llama_config_from_gguf(meta: Dict, tensors: Dict, max_seq_len: int, source: str) -> dict:
    """ferroformer Llama config of a llama GGUF file's metadata; ValueError (naming
    ``source``) for a missing key or a value of the wrong type."""
    if meta.get("general.architecture") != "llama":
        raise ValueError(
            f"{source}: expected a llama GGUF, got {meta.get('general.architecture')!r:.80}"
        )

    def get(key, kind=int):
        return positive(meta.get("llama." + key), kind, f"metadata llama.{key}", source)

    return dict(
        vocab_size=vocab_size(meta, source),
        max_seq_len=max_seq_len,
        d_model=get("embedding_length"),
        n_heads=get("attention.head_count"),
        n_kv_heads=get("attention.head_count_kv"),
        n_layers=get("block_count"),
        d_ff=get("feed_forward_length"),
        rope_base=float(get("rope.freq_base", float)),
        norm_eps=float(get("attention.layer_norm_rms_epsilon", float)),
        tie_embeddings="output.weight" not in tensors,
    )
