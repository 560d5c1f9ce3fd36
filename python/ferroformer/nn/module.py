"""``Parameter`` and ``Module``: the base of every layer, without an autograd tape.

    lin = Linear(4, 3)                  # parameters live on the numpy backend ...
    lin.to("rust")                      # ... until moved (ops.asarray)
    y = lin(x)                          # forward: keeps what backward needs (training mode)
    dx = lin.backward(dy)               # returns input grads, ADDS into lin.weight.grad

A module keeps the values its backward needs in ``self.cache`` (only while
training); ``clear_cache()`` drops them, which is what gradient
checkpointing does after a block's forward.

The public ops check every argument (backends/base.py). A module whose shapes
are fixed at construction checks only what it is handed, through
``ops._ready`` (the backend's array type, dtype, the last axis, a result far
from the memory limit: a few comparisons), and then calls the backend's
unchecked ``_op``: its weights were shaped when it was built and its
intermediate results are its own. Where ``_ready`` says no, the module calls
the public op, which checks everything and raises the contract's error; a
decoding step makes some 300 such calls, each about 1-2 us cheaper this way.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Iterator, List, Tuple

import numpy as np

from .. import backends


class Parameter:
    """A trainable array ``data`` and its accumulated gradient ``grad`` (None until a backward)."""

    __slots__ = ("data", "grad")

    def __init__(self, data):
        self.data = data
        self.grad = None

    @property
    def shape(self):
        return self.data.shape

    def add_grad(self, g) -> None:
        """``grad += g``; the first contribution is stored as is (a fresh array from an op)."""
        if self.grad is None:
            self.grad = (
                g
                if (g.flags.c_contiguous and g.dtype == self.data.dtype)
                else g.astype(self.data.dtype, order="C")
            )
        else:
            self.grad += g

    def __repr__(self) -> str:
        return f"Parameter(shape={tuple(self.data.shape)}, dtype={self.data.dtype})"


class Module:
    """Base class: registers Parameter / Module attributes, moves them between backends."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        self.ops = backends.backend("numpy")
        self.training = True
        self.cache = None

    def __setattr__(self, name, value):
        params = self.__dict__.get("_parameters")
        if params is None:
            raise AttributeError("call Module.__init__() before setting attributes")
        for d in (self._parameters, self._modules, self._buffers):
            d.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, value) -> None:
        """A non-trainable array (e.g. a RoPE table) that ``to()`` moves but state_dict omits."""
        object.__setattr__(self, name, value)
        self._buffers[name] = True

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError

    def backward(self, grad_out):
        raise NotImplementedError

    # -- traversal -----------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[Tuple[str, Module]]:
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def named_parameters(self) -> List[Tuple[str, Parameter]]:
        """(dotted name, Parameter), each parameter once (a tied one under its first name)."""
        out, seen = [], set()
        for mname, m in self.named_modules():
            for pname, p in m._parameters.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append((f"{mname}.{pname}" if mname else pname, p))
        return out

    def parameters(self) -> List[Parameter]:
        return [p for _, p in self.named_parameters()]

    def num_parameters(self) -> int:
        return sum(int(p.data.size) for p in self.parameters())

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    # -- modes -----------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            m.training = mode
        if not mode:
            self.clear_cache()
        return self

    def eval(self) -> Module:
        return self.train(False)

    def take_cache(self):
        """The forward cache, handed over once; a clear error when there is none."""
        cache = self.cache
        if cache is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward: no forward to differentiate "
                "(run forward in training mode first, and backward once per forward)"
            )
        self.cache = None
        return cache

    def clear_cache(self) -> None:
        for m in self.modules():
            m.cache = None

    def cache_nbytes(self) -> int:
        """Bytes of the arrays kept for backward (what gradient checkpointing saves)."""

        def size(v):
            if hasattr(v, "nbytes") and hasattr(v, "shape"):
                return int(v.nbytes)
            if isinstance(v, (tuple, list)):
                return sum(size(u) for u in v)
            if isinstance(v, dict):
                return sum(size(u) for u in v.values())
            return 0

        return sum(size(m.cache) for m in self.modules())

    # -- state ---------------------------------------------------------------
    def state_dict(self) -> Dict[str, object]:
        return OrderedDict((name, p.data) for name, p in self.named_parameters())

    def load_state_dict(self, state: Dict[str, object], strict: bool = True) -> None:
        """Copies arrays into the parameters; names and shapes must match (ValueError)."""
        params = dict(self.named_parameters())
        missing = [n for n in params if n not in state]
        unexpected = [n for n in state if n not in params]
        if strict and (missing or unexpected):
            raise ValueError(f"load_state_dict: missing {missing}, unexpected {unexpected}")
        for name, p in params.items():
            if name not in state:
                continue
            value = state[name]
            if tuple(value.shape) != tuple(p.data.shape):
                raise ValueError(
                    f"load_state_dict: {name} has shape {tuple(value.shape)}, "
                    f"the model expects {tuple(p.data.shape)}"
                )
            p.data = self.ops.asarray(value, dtype=p.data.dtype).copy()
            p.grad = None

    def to(self, backend=None, dtype=None) -> Module:
        """Moves parameters and buffers onto ``backend`` (name or Backend), optionally casting."""
        ops = backends.backend(backend)
        for m in self.modules():
            m.ops = ops
            for name in m._buffers:
                object.__setattr__(m, name, _move(ops, getattr(m, name), dtype))
        for p in self.parameters():
            p.data = _move(ops, p.data, dtype)
            p.grad = None
        self.clear_cache()
        return self

    @property
    def dtype(self):
        params = self.parameters()
        return params[0].data.dtype if params else np.dtype(np.float32)

    # -- dropout generators (saved in checkpoints for exact resume) -------------
    def rng_states(self) -> Dict[str, dict]:
        return {
            name: m.rng.bit_generator.state
            for name, m in self.named_modules()
            if getattr(m, "rng", None) is not None
        }

    def set_rng_states(self, states: Dict[str, dict]) -> None:
        mods = dict(self.named_modules())
        for name, state in states.items():
            m = mods.get(name)
            if m is None or getattr(m, "rng", None) is None:
                raise ValueError(f"set_rng_states: the model has no random generator at {name!r}")
            m.rng.bit_generator.state = state

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return "\n".join(lines) + ")"


def _move(ops, x, dtype):
    if x is None or isinstance(x, (int, float)):
        return x
    if dtype is None and np.issubdtype(x.dtype, np.floating):
        dtype = x.dtype
    return ops.asarray(x, dtype=dtype if np.issubdtype(x.dtype, np.floating) else None)


class ModuleList(Module):
    """An indexable list of modules, named ``0``, ``1``, ... in parameter names."""

    def __init__(self, modules=()):
        super().__init__()
        self._list = []
        for m in modules:
            self.append(m)

    def append(self, m: Module) -> None:
        setattr(self, str(len(self._list)), m)
        self._list.append(m)

    def __getitem__(self, i):
        return self._list[i]

    def __len__(self) -> int:
        return len(self._list)

    def __iter__(self):
        return iter(self._list)
