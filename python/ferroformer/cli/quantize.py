"""``quantize``: a ferroformer checkpoint or a GGUF file, its linear layers quantized
to one GGUF block type, written as a GGUF file (``ferroformer.save_gguf``)."""

from __future__ import annotations

import sys

from .args import add_command

TYPES = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q6_k")


def add_parser(sub) -> None:
    p = add_command(
        sub,
        "quantize",
        "quantize a checkpoint or GGUF file into a GGUF file",
        description="Read IN (a checkpoint written by `train`, or a GGUF file of a llama or "
        "gpt2 model), quantize its linear layers to --type (a GGUF file's "
        "layers are decoded first; embeddings and a tied head keep their "
        "blocks) and write OUT as a GGUF file that llama.cpp loads.",
    )
    p.add_argument("input", metavar="IN", help="a ferroformer checkpoint or a GGUF file")
    p.add_argument("output", metavar="OUT", help="the GGUF file to write")
    p.add_argument(
        "--type",
        dest="qtype",
        choices=TYPES,
        default="q4_k",
        type=str.lower,
        help="the block type (default: q4_k)",
    )


def _is_gguf(path: str) -> bool:
    from .._files import open_regular

    f, size = open_regular(path, "input file")
    with f:
        return size >= 4 and f.read(4) == b"GGUF"


def _progress(items, what: str):
    """A progress line on a terminal (tqdm); the items unchanged otherwise."""
    if not sys.stderr.isatty():
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=what, unit="layer", file=sys.stderr, leave=False)


def _layers(model):
    """(parent, attribute name, layer) of every linear layer (float or quantized) that
    is not the token embedding's matrix (a tied head stays as it is)."""
    from ..nn import Embedding, Linear
    from ..quant import QuantizedEmbedding, QuantizedLinear

    tables = set()
    for m in model.modules():
        if isinstance(m, Embedding):
            tables.add(id(m.weight))
        elif isinstance(m, QuantizedEmbedding):
            tables.add(m.table.data.__array_interface__["data"][0])
    found = []
    for _, parent in model.named_modules():
        for name, child in parent._modules.items():
            if isinstance(child, Linear) and id(child.weight) not in tables:
                found.append((parent, name, child))
            elif isinstance(child, QuantizedLinear) and not (
                len(child.parts) == 1
                and child.parts[0].data.__array_interface__["data"][0] in tables
            ):
                found.append((parent, name, child))
    return found


def quantize_layers(model, qtype: str, progress=_progress):
    """Every linear layer of ``model`` (see ``_layers``) as a QuantizedLinear of ``qtype``,
    in place; quantized ones are decoded one at a time first."""
    from ..nn import Linear, ModuleList
    from ..quant import QuantizedLinear, block_format

    fmt = block_format(qtype)
    layers = _layers(model)
    bad = [
        f"{name} (in_features {layer.in_features})"
        for _, name, layer in layers
        if layer.in_features % fmt.block_size
    ]
    if bad:
        raise ValueError(
            f"quantize: {fmt.name} needs in_features that are multiples of "
            f"{fmt.block_size}; these layers are not: {', '.join(bad[:4])}"
        )
    for parent, name, layer in progress(layers, f"quantizing to {fmt.name}"):
        if isinstance(layer, QuantizedLinear):
            bias = None if layer.bias is None else layer.bias.data
            flt = Linear(
                layer.in_features,
                layer.out_features,
                bias=bias is not None,
                weight=layer.dequantize(),
            )
            if bias is not None:
                flt.bias.data = bias
            flt.ops = layer.ops
            layer = flt
        q = QuantizedLinear.from_linear(layer, fmt.name)
        setattr(parent, name, q)
        if isinstance(parent, ModuleList):
            parent._list[int(name)] = q
    return model


def run(args) -> int:
    from .. import save_gguf
    from ..models import GPT, Llama

    if _is_gguf(args.input):
        from .. import load_gguf

        model, tok = load_gguf(args.input, backend="numpy")
    else:
        from ..checkpoint import load_checkpoint

        model, tok = load_checkpoint(args.input, backend="numpy").model, None
    if not isinstance(model, (GPT, Llama)):
        raise ValueError(
            f"{args.input}: a {type(model).__name__} model; GGUF files hold GPT and Llama models"
        )
    quantize_layers(model, args.qtype)
    save_gguf(model, args.output, tokenizer=tok)
    print(f"wrote {args.output} ({args.qtype.upper()})")
    return 0
