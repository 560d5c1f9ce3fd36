"""``embed``: sentence embeddings with all-MiniLM-L6-v2 and their cosine similarities."""

from __future__ import annotations

from .args import add_backend, add_command


def add_parser(sub) -> None:
    p = add_command(sub, "embed", "sentence embeddings with all-MiniLM-L6-v2: cosine similarities")
    p.add_argument("sentences", nargs="+", help="sentences to compare")
    add_backend(p)


def run(args) -> int:
    from ..pretrained import load
    from ..pretrained.minilm import embed

    model, tok = load("all-MiniLM-L6-v2", backend=args.backend)
    e = embed(model, tok, args.sentences)
    sim = e @ e.T
    width = max(len(s) for s in args.sentences)
    print("cosine similarity (all-MiniLM-L6-v2)")
    for i, s in enumerate(args.sentences):
        print(f"{s:<{width}}  " + "  ".join(f"{v:6.4f}" for v in sim[i]))
    return 0
