"""``inspect``: attention entropy per head, and an attention map, for a ``train``
checkpoint."""

from __future__ import annotations

from .args import add_backend, add_command
from .runs import check_output, encode_prompt, find_checkpoint, seq_lens, stored_run, token_label


def add_parser(sub) -> None:
    i = add_command(
        sub,
        "inspect",
        "attention entropy per head, and an attention map, for a `train` checkpoint",
        description="Runs the model of a `train` checkpoint on a prompt plus its own greedy "
        "answer and prints the entropy of every attention head; --plot draws the "
        "attention of one layer (all heads) as a PNG.",
    )
    i.add_argument(
        "--checkpoint",
        required=True,
        metavar="PATH",
        help="a checkpoint file, or a --checkpoint-dir (its latest checkpoint)",
    )
    i.add_argument("--prompt", required=True, help="as for generate")
    i.add_argument("--layer", type=int, default=0, help="layer to plot (default 0; -1: the last)")
    i.add_argument(
        "--kind",
        choices=["self", "cross"],
        default="self",
        help="transformer: self- or cross-attention to plot",
    )
    i.add_argument(
        "--stack",
        choices=["encoder", "decoder"],
        default=None,
        help="transformer: which stack to plot (default: encoder for self, decoder for cross)",
    )
    i.add_argument(
        "--plot",
        metavar="PATH",
        default=None,
        help='write the attention map as a PNG (needs pip install "ferroformer[plot]")',
    )
    add_backend(i)


def run(args) -> int:
    import numpy as np

    from ..checkpoint import load_checkpoint
    from ..data.tasks import BOS, EOS, SEP
    from ..inspect import attention_entropy, attention_weights

    if args.plot:
        check_output("--plot", args.plot)
    path = find_checkpoint(args.checkpoint)
    ckpt = load_checkpoint(path, backend=args.backend)
    run = stored_run(ckpt, path)
    model = ckpt.model
    x = encode_prompt(run, args.prompt)
    # the attention while the model writes its own (greedy) answer to the prompt
    if run["model"] == "transformer":
        src = np.asarray([x], np.int64)
        answer = [
            int(t)
            for t in np.asarray(
                model.generate(src, max_len=seq_lens(run)[1] + 1, bos_id=BOS, eos_id=EOS)
            )[0]
        ]
        tgt = [BOS, *answer[: answer.index(EOS) if EOS in answer else None]]
        inputs, seqs = (src, np.asarray([tgt], np.int64)), {"encoder": x, "decoder": tgt}
        layers = {"encoder": len(model.encoder), "decoder": len(model.decoder)}
    else:
        if run["task"] == "bytes":
            seq = x[-int(model.config["max_seq_len"]) :]
        else:
            prompt = [BOS, *x, SEP]
            answer = [
                int(t)
                for t in np.asarray(
                    model.generate(
                        np.asarray([prompt]), max_new_tokens=seq_lens(run)[1] + 1, eos_id=EOS
                    )
                )[0]
            ]
            seq = prompt + answer[: answer.index(EOS) if EOS in answer else None]
        inputs, seqs, layers = (
            (np.asarray([seq], np.int64),),
            {None: seq},
            {None: len(model.blocks)},
        )
    print(
        "tokens: "
        + " ".join(
            f"{s or 'input'} [{' '.join(token_label(run, t) for t in q)}]" for s, q in seqs.items()
        )
    )
    print("attention entropy per head, mean over queries (nats; 0: one key, log n: n keys alike):")
    for stack, n in layers.items():
        kinds = ["self", "cross"] if stack == "decoder" else ["self"]
        for kind in kinds:
            for layer in range(n):
                w = attention_weights(model, *inputs, layer=layer, kind=kind, stack=stack)
                name = " ".join(p for p in (stack, kind if stack else None, f"layer {layer}") if p)
                print(
                    f"  {name:<22} "
                    + "  ".join(f"h{h} {e:.3f}" for h, e in enumerate(attention_entropy(w)[0]))
                )
    if args.plot:
        from ..plots import plot_attention

        stack = args.stack if run["model"] == "transformer" else None
        kind = args.kind
        if stack is None and run["model"] == "transformer":
            stack = "decoder" if kind == "cross" else "encoder"
        w = attention_weights(model, *inputs, layer=args.layer, kind=kind, stack=stack)
        q = seqs["decoder" if kind == "cross" else stack]
        k = seqs["encoder" if kind == "cross" else stack]
        title = " ".join(p for p in (stack, kind, f"layer {args.layer}") if p)
        print(
            "attention map: "
            + plot_attention(
                w[0],
                args.plot,
                tokens_q=[token_label(run, t) for t in q],
                tokens_k=[token_label(run, t) for t in k],
                title=title,
            )
        )
    return 0
