"""Inference-only layers over GGUF blocks, and ``quantize_model``.

    lin = QuantizedLinear(QuantizedTensor(raw, "Q4_K", (out, in)), bias=None)
    y = lin(x)                                  # x (..., in) -> (..., out); weights never decoded whole
    emb = QuantizedEmbedding(QuantizedTensor(raw, "Q8_0", (vocab, dim)))
    x = emb(ids)                                # ids (...) int -> (..., dim): decodes only those rows
    quantize_model(model, "Q8_0")               # its nn.Linear layers -> QuantizedLinear, in place

A ``QuantizedLinear`` computes through its backend's op
``ops.quantized_linear_forward(x, qweight, qtype, bias, activations=...)`` (on numpy
the reference of reference.py; the blocks stay in host memory on every backend).
``activations="int8"`` (the default, as in llama.cpp) rounds x to int8 per 32
values so that the rust backend multiplies with integer dot products straight
from the blocks, about 3x faster than ``"float"``, which multiplies x as it is
(the exact product with the decoded weights, up to summation order). The int8
result differs from the float one by at most ``sum over chunks of max|x_chunk| /
254 * sum |w_chunk|`` (see ``reference.int8_activations``); every backend computes
the same rounding, so numpy, rust and cupy agree either way. ``set_activations(model,
"float")`` switches every layer of a model.
Its weight may be several row slabs stacked, rows [part 0 | part 1 | ...],
each in its own block type (a GGUF file keeps q, k and v apart, and a Q4_K_M
file mixes Q4_K and Q6_K): the layer runs one product per part and joins
the outputs. The blocks are a plain attribute, not a ``Parameter``:
``Module.to`` leaves them where they are (host memory, possibly a memory
map) and ``state_dict`` holds only the float bias. ``backward`` raises: the
weights are frozen.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from ..backends import to_host
from ..nn.embedding import Embedding
from ..nn.linear import Linear
from ..nn.module import Module, ModuleList, Parameter
from .formats import block_format, dequantize
from .quantize import QUANTIZERS, quantize
from .tensor import QuantizedTensor


def _activations(where: str, mode) -> str:
    if mode not in ("int8", "float"):
        raise ValueError(f'{where}: activations must be "int8" or "float", got {mode!r:.40}')
    return mode


def set_activations(model: Module, mode: str) -> Module:
    """Sets ``activations`` (``"int8"`` or ``"float"``) on every QuantizedLinear of
    ``model``; returns the model."""
    mode = _activations("set_activations", mode)
    for m in model.modules():
        if isinstance(m, QuantizedLinear):
            m.activations = mode
    return model


def _frozen(layer: str) -> RuntimeError:
    return RuntimeError(
        f"{layer}.backward: quantized weights are frozen (inference only); "
        "train the float model and quantize it afterwards"
    )


class QuantizedLinear(Module):
    """y = x @ W.T + b with W held as GGUF blocks; ``weight``: a QuantizedTensor
    (out, in), or a sequence of them with the same in_features stacked by rows."""

    def __init__(
        self,
        weight: Union[QuantizedTensor, Sequence[QuantizedTensor]],
        bias=None,
        *,
        dtype=np.float32,
        activations: str = "int8",
    ):
        super().__init__()
        self.activations = _activations("QuantizedLinear", activations)
        parts = (weight,) if isinstance(weight, QuantizedTensor) else tuple(weight)
        if not parts or not all(isinstance(p, QuantizedTensor) for p in parts):
            raise TypeError(
                "QuantizedLinear: weight must be a QuantizedTensor or a non-empty sequence of them"
            )
        in_f = parts[0].in_features
        if any(p.in_features != in_f for p in parts):
            raise ValueError(
                f"QuantizedLinear: stacked parts must share in_features, got "
                f"{[p.shape for p in parts]}"
            )
        self.parts = parts
        self.in_features, self.out_features = in_f, sum(p.out_features for p in parts)
        if bias is not None:
            bias = np.asarray(to_host(bias), dtype=dtype)
            if bias.shape != (self.out_features,):
                raise ValueError(
                    f"QuantizedLinear: bias must be ({self.out_features},), got {bias.shape}"
                )
            bias = Parameter(bias.copy())
        self.bias = bias

    @classmethod
    def from_linear(cls, linear: Linear, qtype, *, activations: str = "int8") -> QuantizedLinear:
        """The blocks of ``linear``'s weight quantized to ``qtype`` (see quantize.py), its bias kept."""
        w = to_host(linear.weight.data)
        raw = quantize(w, qtype)
        bias = None if linear.bias is None else to_host(linear.bias.data)
        q = cls(QuantizedTensor(raw, qtype, w.shape), bias, dtype=w.dtype, activations=activations)
        q.ops, q.training = linear.ops, linear.training
        return q

    @property
    def qtype(self) -> str:
        """The block type, or the parts' types joined by "+" when they differ."""
        names = dict.fromkeys(p.qtype for p in self.parts)
        return "+".join(names)

    def forward(self, x):
        """x (..., in) -> (..., out)."""
        ops, mode = self.ops, self.activations
        b = None if self.bias is None else self.bias.data
        if ops._ready(x, x.dtype, self.in_features, self.out_features) and (
            b is None or b.dtype == x.dtype
        ):
            return self._fast_forward(x, b)
        op = ops.quantized_linear_forward
        if len(self.parts) == 1:
            return op(x, self.parts[0].data, self.parts[0].qtype, b, activations=mode)
        ys = [op(x, p.data, p.qtype, activations=mode) for p in self.parts]
        y = self.ops.xp.concatenate(ys, axis=-1)
        if b is not None:
            y += b
        return y

    def _fast_forward(self, x, b):
        """The blocks' products through the unchecked op: the parts were checked when
        the layer was built, x by ``forward``."""
        ops, int8 = self.ops, self.activations == "int8"
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if not x2.flags.c_contiguous:
            x2 = ops.xp.ascontiguousarray(x2)

        def product(p, bias):
            blocks = int8 and p.format.block_size > 1
            return ops._quantized_linear_forward(x2, p.data, p.qtype, bias, blocks)

        if len(self.parts) == 1:
            y = product(self.parts[0], b)
        else:
            y = ops.xp.concatenate([product(p, None) for p in self.parts], axis=-1)
            if b is not None:
                y += b
        return y.reshape((*lead, self.out_features))

    def backward(self, dy):
        raise _frozen("QuantizedLinear")

    def dequantize(self) -> np.ndarray:
        """The (out, in) float32 matrix the blocks decode to (for inspection and tests)."""
        return np.concatenate([p.dequantize() for p in self.parts])

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)

    def extra_repr(self) -> str:
        return (
            f"{self.in_features}, {self.out_features}, {self.qtype}, "
            f"bias={self.bias is not None}, activations={self.activations}"
        )


class QuantizedEmbedding(Module):
    """Rows of a (num_embeddings, dim) table held as GGUF blocks; a lookup decodes
    only the rows it returns."""

    def __init__(self, table: QuantizedTensor, *, dtype=np.float32):
        super().__init__()
        if not isinstance(table, QuantizedTensor):
            raise TypeError(
                f"QuantizedEmbedding: table must be a QuantizedTensor, got {type(table).__name__}"
            )
        self.table = table
        self.num_embeddings, self.dim = table.shape
        self._dtype = np.dtype(dtype)

    def forward(self, ids):
        """ids (...) int -> (..., dim)."""
        ids = to_host(ids)
        if not isinstance(ids, np.ndarray) or not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(
                f"embedding_forward: ids must be an integer array, got "
                f"{getattr(ids, 'dtype', type(ids).__name__)}"
            )
        flat = ids.reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= self.num_embeddings):
            bad = flat[(flat < 0) | (flat >= self.num_embeddings)][0]
            raise IndexError(
                f"embedding_forward: id {int(bad)} is out of range for "
                f"{self.num_embeddings} embeddings"
            )
        rows = dequantize(self.table.data[flat], self.table.format)
        y = rows.astype(self._dtype, copy=False).reshape(*ids.shape, self.dim)
        return self.ops.asarray(y)

    def backward(self, dy):
        raise _frozen("QuantizedEmbedding")

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.dim}, {self.table.qtype}"


def quantize_model(model: Module, qtype, *, activations: str = "int8") -> Module:
    """Replaces ``model``'s ``nn.Linear`` layers by ``QuantizedLinear`` of ``qtype`` (one of
    ``QUANTIZERS``), in place, and returns the model. Embeddings stay float, and so does an
    output head tied to an embedding (its matrix is the embedding's). Every layer's
    in_features must be a multiple of the block size (ValueError naming those that are
    not, before anything changes). The model then runs forward and generate; its
    backward raises."""
    _activations("quantize_model", activations)
    fmt = block_format(qtype)
    if fmt.name not in QUANTIZERS:
        raise ValueError(
            f"quantize_model: no quantizer for {fmt.name}; choose one of {', '.join(QUANTIZERS)}"
        )
    tied = {id(m.weight) for m in model.modules() if isinstance(m, Embedding)}
    found = []
    for parent_name, parent in model.named_modules():
        for name, child in parent._modules.items():
            if isinstance(child, Linear) and id(child.weight) not in tied:
                found.append(
                    (f"{parent_name}.{name}" if parent_name else name, parent, name, child)
                )
    bad = [
        f"{path} (in_features {m.in_features})"
        for path, _, _, m in found
        if m.in_features % fmt.block_size
    ]
    if bad:
        raise ValueError(
            f"quantize_model: {fmt.name} needs in_features that are multiples of "
            f"{fmt.block_size}; these layers are not: {', '.join(bad)}"
        )
    done = {}  # a layer reached from two parents is quantized once
    for _, parent, name, child in found:
        q = done.get(id(child))
        if q is None:
            q = done[id(child)] = QuantizedLinear.from_linear(
                child, fmt.name, activations=activations
            )
        setattr(parent, name, q)
        if isinstance(parent, ModuleList):
            parent._list[int(name)] = q
    return model
