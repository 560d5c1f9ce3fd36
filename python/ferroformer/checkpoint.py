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
import stat
import tempfile
from typing import NamedTuple, Optional

import numpy as np

from ._files import loads_json, read_safetensors
from .backends import to_host

FORMAT = "ferroformer.checkpoint/1"
MAX_HEADER = 64 << 20  # bytes of JSON header we are willing to parse
MAX_BUFFER = 1 << 24  # values of position tables a config may ask for beyond its weights
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937")


class Checkpoint(NamedTuple):
    model: object
    step: int
    rng_states: dict
    extra: dict


def _host(x):
    return np.ascontiguousarray(to_host(x))


# -- writing --------------------------------------------------------------------------
def save_checkpoint(
    path,
    model,
    optimizer=None,
    *,
    step: int = 0,
    rng_states: Optional[dict] = None,
    extra: Optional[dict] = None,
) -> None:
    """Writes model (+ optimizer) state to ``path`` atomically."""
    from safetensors.numpy import save

    tensors = {f"model/{name}": _host(p.data) for name, p in model.named_parameters()}
    meta = {
        "format": FORMAT,
        "model_class": type(model).__name__,
        "model_config": json.dumps(model.config),
        "step": json.dumps(int(step)),
        "rng": json.dumps({"model": model.rng_states(), **(rng_states or {})}),
        "extra": json.dumps(extra or {}),
    }
    if optimizer is not None:
        meta["optimizer"] = json.dumps(optimizer.hyper())
        tensors.update({f"optim/{k}": _host(v) for k, v in optimizer.state_tensors().items()})
    atomic_write(path, save(tensors, metadata=meta))


def atomic_write(path, data: bytes) -> None:
    """Temp file in the target's directory, fsync, os.replace, fsync the directory.
    The file gets the usual permissions (0666 less the umask), not mkstemp's 0600.
    A path that names something other than a regular file (a device such as
    /dev/null, a FIFO, a socket, a directory) is refused: replacing it would
    destroy it."""
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISREG(mode):
            raise ValueError(
                f"{path}: not a regular file (a device, FIFO, socket or directory); "
                "refusing to replace it"
            )
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), 0o666 & ~_umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # the target is untouched; the partial temporary file goes
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
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
WHAT = "ferroformer checkpoint"


def _bad(path, what) -> ValueError:
    return ValueError(f"{os.fspath(path)}: not a valid {WHAT}: {what}")


def _json(path, meta, key, default=None):
    if key not in meta:
        if default is not None:
            return default
        raise _bad(path, f"metadata has no {key!r}")
    return loads_json(meta[key], f"{os.fspath(path)}: not a valid {WHAT}: metadata {key!r}")


def read_checkpoint(path):
    """(tensors {name: np.ndarray}, metadata {str: str}) after checking the file's
    structure (_files.read_safetensors: a regular file, the header's length, JSON,
    dtypes, shapes and data ranges against the file, before any data is read)."""
    tensors, meta = read_safetensors(path, WHAT, max_header=MAX_HEADER)
    if meta.get("format") != FORMAT:
        raise _bad(path, f"format is {meta.get('format')!r:.80}, expected {FORMAT!r}")
    return tensors, meta


def _int(config, key, minimum=1):
    v = config[key]
    if not (isinstance(v, int) and not isinstance(v, bool)) or v < minimum:
        raise ValueError(f"config {key!r} must be an int >= {minimum}, got {v!r}")
    return v


def _heads(c, h, k=None):
    if c % h:
        raise ValueError(f"config d_model {c} is not divisible by n_heads {h}")
    if k is not None and h % k:
        raise ValueError(f"config n_heads {h} is not a multiple of n_kv_heads {k}")
    return c // h


def _block(p, c, f, bias=True, *, qkv=None, rms=False, swiglu=False, cross=False, proj_in=None):
    """The parameter shapes of one transformer block under the prefix p."""
    out = {}

    def linear(name, n_out, n_in, with_bias=bias):
        out[f"{p}{name}.weight"] = (n_out, n_in)
        if with_bias:
            out[f"{p}{name}.bias"] = (n_out,)

    def norm(name):
        out[f"{p}{name}.weight"] = (c,)
        if not rms:
            out[f"{p}{name}.bias"] = (c,)

    norm("ln1")
    linear("attn.qkv", 3 * c if qkv is None else qkv, c)
    linear("attn.proj", c, c if proj_in is None else proj_in)
    if cross:
        norm("ln_cross")
        linear("cross_attn.q", c, c)
        linear("cross_attn.kv", 2 * c, c)
        linear("cross_attn.proj", c, c)
    norm("ln2")
    linear("ff.fc1", 2 * f if swiglu else f, c)
    linear("ff.fc2", c, f)
    return out


def expected_shapes(cls_name: str, config: dict, max_layers=None):
    """({parameter name: shape}, elements of the buffers it builds (position tables))
    of the model ``MODELS[cls_name].from_config(config)`` with the default layer
    factories, computed from the config alone, so that a checkpoint's (or a pretrained
    file's) config can be checked against the tensors it holds before anything is
    built. ValueError for a config whose sizes are not positive ints or do not divide,
    or (given ``max_layers``, the number of tensors in the file) more layers than that."""
    from .models import MODELS

    cls = MODELS[cls_name]
    import inspect

    sig = inspect.signature(cls.__init__).parameters
    cfg = {k: p.default for k, p in sig.items() if k in cls.config_keys()}
    cfg.update(config)
    missing = [k for k, v in cfg.items() if v is inspect.Parameter.empty]
    if missing:
        raise ValueError(f"{cls_name} config lacks {missing}")
    c = _int(cfg, "d_model")
    shapes, buffers = {}, 0

    def layers(key):
        n = _int(cfg, key, 0)
        if max_layers is not None and n > max_layers:
            raise ValueError(f"config {key} = {n}, but the file holds only {max_layers} tensors")
        return range(n)

    if cls_name == "Transformer":
        h, f, t = _int(cfg, "n_heads"), _int(cfg, "d_ff"), _int(cfg, "max_seq_len")
        _heads(c, h)
        shapes["src_emb.weight"] = (_int(cfg, "src_vocab_size"), c)
        shapes["tgt_emb.weight"] = (vt := _int(cfg, "tgt_vocab_size"), c)
        swiglu = cfg["activation"] == "swiglu"
        for i in layers("n_encoder_layers"):
            shapes.update(_block(f"encoder.{i}.", c, f, swiglu=swiglu))
        for i in layers("n_decoder_layers"):
            shapes.update(_block(f"decoder.{i}.", c, f, swiglu=swiglu, cross=True))
        if cfg["norm_first"]:
            for n in ("enc_norm", "dec_norm"):
                shapes[f"{n}.weight"] = shapes[f"{n}.bias"] = (c,)
        if not cfg["tie_embeddings"]:
            shapes["head.weight"] = (vt, c)
        buffers = t * c  # the sinusoidal table
    elif cls_name in ("GPT", "BERT"):
        v, t, h = _int(cfg, "vocab_size"), _int(cfg, "max_seq_len"), _int(cfg, "n_heads")
        _heads(c, h)
        f = 4 * c if cfg["d_ff"] is None else _int(cfg, "d_ff")
        n_layers = layers("n_layers")
        if cls_name == "GPT":
            bias = bool(cfg["bias"])
            shapes = {"wte.weight": (v, c), "wpe.weight": (t, c)}
            for i in n_layers:
                shapes.update(_block(f"blocks.{i}.", c, f, bias))
            shapes["ln_f.weight"] = shapes["ln_f.bias"] = (c,)
        else:
            shapes = {"tok_emb.weight": (v, c), "pos_emb.weight": (t, c)}
            if _int(cfg, "n_segments", 0):
                shapes["seg_emb.weight"] = (cfg["n_segments"], c)
            shapes["emb_ln.weight"] = shapes["emb_ln.bias"] = (c,)
            for i in n_layers:
                shapes.update(_block(f"blocks.{i}.", c, f))
            shapes.update(
                {
                    "head_dense.weight": (c, c),
                    "head_dense.bias": (c,),
                    "head_ln.weight": (c,),
                    "head_ln.bias": (c,),
                    "decoder.bias": (v,),
                }
            )
    elif cls_name == "Llama":
        v, t, h = _int(cfg, "vocab_size"), _int(cfg, "max_seq_len"), _int(cfg, "n_heads")
        k = h if cfg["n_kv_heads"] is None else _int(cfg, "n_kv_heads")
        d = _heads(c, h, k)
        f = -(-(8 * c // 3) // 32) * 32 if cfg["d_ff"] is None else _int(cfg, "d_ff")
        shapes = {"tok_emb.weight": (v, c)}
        for i in layers("n_layers"):
            shapes.update(
                _block(
                    f"blocks.{i}.",
                    c,
                    f,
                    False,
                    qkv=(h + 2 * k) * d,
                    rms=True,
                    swiglu=True,
                    proj_in=h * d,
                )
            )
        shapes["norm.weight"] = (c,)
        if not cfg["tie_embeddings"]:
            shapes["lm_head.weight"] = (v, c)
        buffers = t * d  # the rotary cos and sin tables, (max_seq_len, head_dim / 2) each
    else:
        raise ValueError(f"no parameter layout known for {cls_name}")
    return shapes, buffers


def check_config_against_tensors(path, cls_name, config, shapes_in_file, what=WHAT):
    """ValueError (naming the file and the tensor) unless the model the config builds
    has exactly the parameters, with exactly the shapes, that the file holds, and
    builds no position tables much larger than its weights. Runs before the model is
    built, so that a config claiming huge sizes never allocates."""
    where = f"{os.fspath(path)}: not a valid {what}"
    try:
        want, buffers = expected_shapes(cls_name, config, len(shapes_in_file))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: {e}") from None
    missing = sorted(set(want) - set(shapes_in_file))
    unexpected = sorted(set(shapes_in_file) - set(want))
    if missing or unexpected:
        raise ValueError(
            f"{where}: its {cls_name} config does not match its tensors: "
            f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}"
        )
    for name, shape in want.items():
        if tuple(shapes_in_file[name]) != shape:
            raise ValueError(
                f"{where}: tensor {name} has shape {tuple(shapes_in_file[name])}, "
                f"its {cls_name} config needs {shape}"
            )
    weights = sum(math.prod(s) for s in want.values())
    if buffers > max(MAX_BUFFER, weights):
        raise ValueError(
            f"{where}: its {cls_name} config (max_seq_len "
            f"{config.get('max_seq_len')}) needs position tables of {buffers} "
            f"values, more than its {weights} weights"
        )


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
    file; without, the config is checked against the file's tensors (names, shapes,
    dtype) and only then is the model rebuilt from it (on ``backend``). With
    ``optimizer``, its state is restored too. Raises ValueError on any mismatch,
    FileNotFoundError for a missing file."""
    from .models import MODELS

    tensors, meta = read_checkpoint(path)
    cls_name = meta.get("model_class")
    if cls_name not in MODELS:
        raise _bad(path, f"unknown model class {cls_name!r:.80}")
    config = _json(path, meta, "model_config")
    step = _json(path, meta, "step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise _bad(path, f"step must be a non-negative int, got {step!r:.80}")
    rng = _json(path, meta, "rng")
    extra = _json(path, meta, "extra", {})
    if not isinstance(extra, dict):
        raise _bad(path, f"extra metadata must be a JSON object, got {type(extra).__name__}")
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
    state = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    for name, arr in state.items():
        if arr.dtype not in (np.float32, np.float64):
            raise _bad(path, f"model/{name} is {arr.dtype}, not float32 or float64")
    if model is None:
        check_config_against_tensors(path, cls_name, config, {k: v.shape for k, v in state.items()})
        dtypes = {arr.dtype for arr in state.values()}
        if len(dtypes) > 1:
            raise _bad(path, f"the weights mix dtypes {sorted(map(str, dtypes))}")
        dtype = dtypes.pop() if dtypes else np.float32
        try:
            model = cls.from_config(config, backend=backend, dtype=dtype)
        except (ValueError, TypeError) as e:  # e.g. an activation the layers do not know
            raise _bad(path, f"its {cls_name} config cannot be built: {e}") from None
    elif type(model).__name__ != cls_name or model.config != config:
        raise _bad(
            path,
            f"written for {cls_name}({config}), but the model is "
            f"{type(model).__name__}({model.config})",
        )

    params = dict(model.named_parameters())
    if set(state) != set(params):
        raise _bad(
            path,
            f"weights do not match the model: missing "
            f"{sorted(set(params) - set(state))[:8]}, unexpected "
            f"{sorted(set(state) - set(params))[:8]}",
        )
    for name, arr in state.items():
        if tuple(arr.shape) != tuple(params[name].data.shape):
            raise _bad(
                path,
                f"{name} has shape {tuple(arr.shape)}, the model expects "
                f"{tuple(params[name].data.shape)}",
            )
        if not np.isfinite(arr).all():
            raise _bad(path, f"{name} is not a finite float array")
    others = [k for k in tensors if not k.startswith(("model/", "optim/"))]
    if others:
        raise _bad(path, f"unexpected tensors {others[:8]}")
    opt_tensors = {k[len("optim/") :]: v for k, v in tensors.items() if k.startswith("optim/")}
    if optimizer is not None:
        if "optimizer" not in meta:
            raise _bad(path, "it holds no optimizer state")
        for name, arr in opt_tensors.items():
            if arr.dtype.kind != "f" or not np.isfinite(arr).all():
                raise _bad(path, f"optim/{name} is not a finite float array")
        hyper = _json(path, meta, "optimizer")
    model.load_state_dict(state)
    try:
        model.set_rng_states(rng.get("model", {}))
    except ValueError as e:
        raise _bad(path, str(e)) from None
    if optimizer is not None:
        try:
            optimizer.load_state(hyper, opt_tensors)
        except (ValueError, TypeError, KeyError) as e:
            raise _bad(path, str(e)) from None
    return Checkpoint(model, step, {k: v for k, v in rng.items() if k != "model"}, extra)
