"""``generate``: continue a prompt with a model saved by ``train``, or (``--gguf FILE``)
with the model and tokenizer of a GGUF file."""

from __future__ import annotations

import math

from .args import add_backend, add_command, non_negative_int, positive_int
from .runs import decode_answer, encode_prompt, find_checkpoint, seq_lens, stored_run


def add_parser(sub) -> None:
    g = add_command(
        sub,
        "generate",
        "continue a prompt with a model saved by `train`",
        description="Load a checkpoint written by `python -m ferroformer train` and complete a "
        "prompt in the way its task reads text: bytes: any text; addition: "
        "'12+34'; copy / reverse: digits, e.g. '31415'.",
    )
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="a checkpoint file, or a --checkpoint-dir (its latest checkpoint)",
    )
    src.add_argument(
        "--gguf", metavar="FILE", help="a GGUF file (llama or gpt2) with its tokenizer"
    )
    g.add_argument("--prompt", required=True, help="the text to continue")
    g.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=None,
        help="default: the task's answer length (bytes: half the context, at most 64)",
    )
    g.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    g.add_argument("--top-k", type=positive_int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument(
        "--seed",
        type=non_negative_int,
        default=None,
        help="seed for sampling (reproducible output)",
    )
    from .chat import add_activations

    add_activations(g)
    add_backend(g)


def run(args) -> int:
    import numpy as np

    from ..checkpoint import load_checkpoint
    from ..data.tasks import BOS, EOS, SEP

    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise ValueError(f"--temperature must be >= 0 (and finite), got {args.temperature}")
    if args.gguf is not None:
        return _run_gguf(args)
    path = find_checkpoint(args.checkpoint)
    ckpt = load_checkpoint(path, backend=args.backend)
    run = stored_run(ckpt, path)
    model = ckpt.model
    x = encode_prompt(run, args.prompt)
    sampling = dict(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed
    )
    if run["model"] == "transformer":
        n = args.max_new_tokens or seq_lens(run)[1] + 1
        out = model.generate(
            np.asarray([x], np.int64), max_len=n, bos_id=BOS, eos_id=EOS, **sampling
        )
    else:
        limit = int(model.config["max_seq_len"])
        if run["task"] == "bytes":
            n, eos, prompt = args.max_new_tokens or min(64, limit // 2), None, x
            if n >= limit:
                raise ValueError(
                    f"--max-new-tokens {n} must be below the model's context of {limit} tokens"
                )
            prompt = prompt[-(limit - n) :]  # the context holds the last bytes of the prompt
        else:
            n, eos, prompt = args.max_new_tokens or seq_lens(run)[1] + 1, EOS, [BOS, *x, SEP]
            if len(prompt) + n > limit:
                raise ValueError(
                    f"--max-new-tokens {n} exceeds the model's context of {limit} "
                    f"tokens after the {len(prompt)}-token prompt"
                )
        out = model.generate(
            np.asarray([prompt], np.int64), max_new_tokens=n, eos_id=eos, **sampling
        )
    row = [int(t) for t in out[0]]  # generate returns host int64 arrays
    if EOS in row and run["task"] != "bytes":
        row = row[: row.index(EOS)]
    print(decode_answer(run, args.prompt, row))
    return 0


def _run_gguf(args) -> int:
    """The prompt continued by a GGUF file's model, its new text printed as it comes."""
    import numpy as np

    from .chat import load_gguf_for_text

    model, tok = load_gguf_for_text(args.gguf, args.backend, args.activations)
    ids = tok.encode(args.prompt)
    limit = int(model.config["max_seq_len"])
    n = args.max_new_tokens or 64
    if not ids:
        raise ValueError("--prompt encodes to no tokens")
    if len(ids) + n > limit:
        raise ValueError(
            f"--max-new-tokens {n} exceeds the model's context of {limit} tokens "
            f"after the {len(ids)}-token prompt"
        )
    got, shown = [], [""]

    def on_token(nxt):
        got.append(int(nxt[0]))
        text = tok.decode(got)
        if not text.endswith("\ufffd") and len(text) > len(shown[0]):
            print(text[len(shown[0]) :], end="", flush=True)
            shown[0] = text

    model.generate(
        np.asarray([ids], np.int64),
        max_new_tokens=n,
        eos_id=tok.eos_id,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        callback=on_token,
    )
    text = tok.decode([t for t in got if t != tok.eos_id])
    print(text[len(shown[0]) :] if text.startswith(shown[0]) else "")
    return 0
