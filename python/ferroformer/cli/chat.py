"""``chat``: answer a question with SmolLM2-135M-Instruct (greedy), streaming the answer;
``--gguf FILE``: with the model and chat template of a GGUF file instead."""

from __future__ import annotations

import sys
import time

from .args import add_backend, add_command, positive_int


def add_parser(sub) -> None:
    p = add_command(sub, "chat", "answer a question with SmolLM2-135M-Instruct (greedy)")
    p.add_argument("question")
    p.add_argument(
        "--gguf",
        metavar="FILE",
        default=None,
        help="a GGUF file (llama or gpt2, with a chat template) instead of SmolLM2",
    )
    add_backend(p)
    p.add_argument("--max-new-tokens", type=positive_int, default=64)
    add_activations(p)
    p.add_argument("--verbose", action="store_true", help="print the time taken to stderr")


def add_activations(p) -> None:
    p.add_argument(
        "--activations",
        choices=("int8", "float"),
        default=None,
        help="how x meets the quantized weights: int8 (integer dots, as llama.cpp; "
        "the default for --gguf) or float (exact; the default for SmolLM2)",
    )


def load_gguf_for_text(path: str, backend, activations=None):
    """(model, tokenizer) of a GGUF file, with a progress note on a terminal;
    ValueError naming the file when it has no tokenizer ferroformer reads."""
    import warnings

    from .. import load_gguf

    if sys.stderr.isatty():
        print(f"loading {path} ...", end="\r", file=sys.stderr, flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no tokenizer: said below, in the error line
        model, tok = load_gguf(path, backend=backend, activations=activations or "int8")
    if tok is None:
        raise ValueError(
            f"{path}: the file's tokenizer is not one ferroformer reads "
            f'(byte-level BPE, tokenizer.ggml.model "gpt2", is)'
        )
    return model, tok


def run(args) -> int:
    from ..pretrained import load
    from ..pretrained.smollm import chat

    if args.gguf is None:
        from ..quant import set_activations

        model, tok = load("SmolLM2-135M-Instruct", backend=args.backend)
        if args.activations:
            set_activations(model, args.activations)
    else:
        model, tok = load_gguf_for_text(args.gguf, args.backend, args.activations)
        if tok.chat_template is None:
            raise ValueError(
                f"{args.gguf}: the file has no chat template "
                f"(tokenizer.chat_template); use `generate --gguf` for a prompt"
            )
    t0 = time.perf_counter()
    chat(
        model,
        tok,
        args.question,
        max_new_tokens=args.max_new_tokens,
        stream=lambda piece: print(piece, end="", flush=True),
    )
    print()
    if args.verbose:
        print(f"({time.perf_counter() - t0:.2f} s)", file=sys.stderr)
    return 0
