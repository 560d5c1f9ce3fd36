"""Checkpoints in safetensors: model weights, optimizer state, step and random
generator states, with the model's config as JSON metadata; never pickle.

    save_checkpoint("run/ckpt.safetensors", model, optimizer, step=100, rng_states={...})
    ckpt = load_checkpoint("run/ckpt.safetensors")                 # rebuilds the model from its config
    ckpt = load_checkpoint(path, model=model, optimizer=opt)       # or restores into existing objects

Layout: tensors ``model/<param name>`` and ``optim/<slot>/<param name>``;
metadata (string -> string) ``format``, ``model_class``, ``model_config``,
``optimizer``, ``step``, ``rng``, ``extra`` (JSON each).

Writes are atomic: a temporary file in the same directory, flushed and fsynced,
then ``os.replace``d over the target. Reads check the file before trusting
anything in it (header length, JSON, dtypes, shapes, offsets, names, sizes,
finiteness) and raise ``ValueError`` with what is wrong.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from typing import NamedTuple, Optional

import numpy as np

from .backends import to_host

FORMAT = "ferroformer.checkpoint/1"
MAX_HEADER = 64 << 20  # bytes of JSON header we are willing to parse
_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "U8": 1, "BOOL": 1}
_FLOAT_DTYPES = ("F32", "F64")
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937")


class Checkpoint(NamedTuple):
    model: object
    step: int
    rng_states: dict
    extra: dict


def _host(x):
    return np.ascontiguousarray(to_host(x))


# -- writing --------------------------------------------------------------------------
def save_checkpoint(path, model, optimizer=None, *, step: int = 0, rng_states: Optional[dict] = None,
                    extra: Optional[dict] = None) -> None:
    """Writes model (+ optimizer) state to ``path`` atomically."""
    from safetensors.numpy import save

    tensors = {f"model/{name}": _host(p.data) for name, p in model.named_parameters()}
    meta = {"format": FORMAT, "model_class": type(model).__name__,
            "model_config": json.dumps(model.config), "step": json.dumps(int(step)),
            "rng": json.dumps({"model": model.rng_states(), **(rng_states or {})}),
            "extra": json.dumps(extra or {})}
    if optimizer is not None:
        meta["optimizer"] = json.dumps(optimizer.hyper())
        tensors.update({f"optim/{k}": _host(v) for k, v in optimizer.state_tensors().items()})
    atomic_write(path, save(tensors, metadata=meta))


def atomic_write(path, data: bytes) -> None:
    """Temp file in the target's directory, fsync, os.replace, fsync the directory.
    The file gets the usual permissions (0666 less the umask), not mkstemp's 0600."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- reading and checking ---------------------------------------------------------------
def _bad(path, what) -> ValueError:
    return ValueError(f"{path}: not a valid ferroformer checkpoint: {what}")


def _check_header(path, data: bytes) -> dict:
    if len(data) < 8:
        raise _bad(path, f"file is {len(data)} bytes, too short for a safetensors header")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER or n > len(data) - 8:
        raise _bad(path, f"header length {n} exceeds the file ({len(data)} bytes) or the "
                         f"{MAX_HEADER}-byte limit (truncated or damaged)")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(path, f"header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise _bad(path, "header is not a JSON object")
    body = len(data) - 8 - n
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not (isinstance(info, dict) and set(info) == {"dtype", "shape", "data_offsets"}):
            raise _bad(path, f"tensor {name!r} has a malformed entry")
        dtype, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in _DTYPES:
            raise _bad(path, f"tensor {name!r} has unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and all(isinstance(s, int) and not isinstance(s, bool)
                                                and 0 <= s for s in shape)):
            raise _bad(path, f"tensor {name!r} has a malformed shape {shape!r}")
        if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs)
                and 0 <= offs[0] <= offs[1] <= body):
            raise _bad(path, f"tensor {name!r} has data offsets {offs!r} outside the {body}-byte data")
        if offs[1] - offs[0] != math.prod(shape) * _DTYPES[dtype]:
            raise _bad(path, f"tensor {name!r}: shape {shape} {dtype} needs "
                             f"{math.prod(shape) * _DTYPES[dtype]} bytes, the offsets hold {offs[1] - offs[0]}")
        spans.append(tuple(offs))
    spans.sort()
    for (_a0, a1), (b0, _b1) in zip(spans, spans[1:]):
        if b0 < a1:
            raise _bad(path, "tensor data overlap")
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                             for k, v in meta.items()):
        raise _bad(path, "missing or malformed __metadata__")
    if meta.get("format") != FORMAT:
        raise _bad(path, f"format is {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def _json(path, meta, key, default=None):
    if key not in meta:
        if default is not None:
            return default
        raise _bad(path, f"metadata has no {key!r}")
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError as e:
        raise _bad(path, f"metadata {key!r} is not JSON ({e})") from None


def read_checkpoint(path):
    """(tensors {name: np.ndarray}, metadata {str: str}) after checking the file's structure."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    with open(path, "rb") as f:
        data = f.read()
    meta = _check_header(path, data)
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, TypeError) as e:
        raise _bad(path, f"safetensors could not read it ({e})") from None
    return tensors, meta


def _check_rng_state(path, name, state):
    if not (isinstance(state, dict) and state.get("bit_generator") in _BIT_GENERATORS):
        raise _bad(path, f"random generator state {name!r} is malformed")
    try:
        g = getattr(np.random, state["bit_generator"])()
        g.state = state
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        raise _bad(path, f"random generator state {name!r} is invalid ({e})") from None


def load_checkpoint(path, model=None, optimizer=None, *, backend=None) -> Checkpoint:
    """Restores a checkpoint. With ``model`` given, its class and config must match the
    file; without, the model is rebuilt from the stored config (on ``backend``).
    With ``optimizer``, its state is restored too. Raises ValueError on any mismatch."""
    from .models import MODELS

    tensors, meta = read_checkpoint(path)
    cls_name = meta.get("model_class")
    if cls_name not in MODELS:
        raise _bad(path, f"unknown model class {cls_name!r}")
    config = _json(path, meta, "model_config")
    step = _json(path, meta, "step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise _bad(path, f"step must be a non-negative int, got {step!r}")
    rng = _json(path, meta, "rng")
    extra = _json(path, meta, "extra", {})
    if not isinstance(rng, dict) or not isinstance(rng.get("model", {}), dict):
        raise _bad(path, "rng metadata is malformed")
    for name, state in rng.get("model", {}).items():
        _check_rng_state(path, f"model/{name}", state)
    for name, state in rng.items():
        if name != "model":
            _check_rng_state(path, name, state)

    cls = MODELS[cls_name]
    try:
        cls.validate_config(config)
    except ValueError as e:
        raise _bad(path, str(e)) from None
    if model is None:
        weights = [v for k, v in tensors.items() if k.startswith("model/")]
        dtype = weights[0].dtype if weights else np.float32
        model = cls.from_config(config, backend=backend, dtype=dtype)
    elif type(model).__name__ != cls_name or model.config != config:
        raise _bad(path, f"written for {cls_name}({config}), but the model is "
                         f"{type(model).__name__}({model.config})")

    state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    params = dict(model.named_parameters())
    if set(state) != set(params):
        raise _bad(path, f"weights do not match the model: missing {sorted(set(params) - set(state))}, "
                         f"unexpected {sorted(set(state) - set(params))}")
    for name, arr in state.items():
        if tuple(arr.shape) != tuple(params[name].data.shape):
            raise _bad(path, f"{name} has shape {tuple(arr.shape)}, the model expects "
                             f"{tuple(params[name].data.shape)}")
        if arr.dtype.kind != "f" or not np.isfinite(arr).all():
            raise _bad(path, f"{name} is not a finite float array")
    model.load_state_dict(state)
    try:
        model.set_rng_states(rng.get("model", {}))
    except ValueError as e:
        raise _bad(path, str(e)) from None

    if optimizer is not None:
        if "optimizer" not in meta:
            raise _bad(path, "it holds no optimizer state")
        opt_tensors = {k[len("optim/"):]: v for k, v in tensors.items() if k.startswith("optim/")}
        try:
            optimizer.load_state(_json(path, meta, "optimizer"), opt_tensors)
        except ValueError as e:
            raise _bad(path, str(e)) from None
    others = [k for k in tensors if not k.startswith(("model/", "optim/"))]
    if others:
        raise _bad(path, f"unexpected tensors {others}")
    return Checkpoint(model, step, {k: v for k, v in rng.items() if k != "model"}, extra)
