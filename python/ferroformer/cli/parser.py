"""The argument parser: every command, flag, default and argparse type. Parsing
runs nothing: each command names its function by ``command`` (see
``COMMANDS`` in __init__.py), imported only once the arguments are good."""

from __future__ import annotations

import argparse
import math

from .. import __version__
from .runs import ARCHS, RUN_DEFAULTS, TASKS

DESCRIPTION = """Transformers on NumPy arrays with Rust kernels; --help on each command.

Every failure is one error: line on stderr: exit code 2 for a bad argument,
1 for a failure while running, 130 for Ctrl-C; --debug prints the traceback too."""
MAX_THREADS = 1024  # a rust pool beyond this is a typo, and starting it takes minutes
# --debug after the command too; SUPPRESS keeps a subcommand from resetting the global one
_DEBUG = argparse.ArgumentParser(add_help=False)
_DEBUG.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                    help="on failure, print the traceback too")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ferroformer", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"ferroformer {__version__}")
    p.add_argument("--debug", action="store_true", help="on failure, print the traceback too")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    b = sub.add_parser("bench", help="time each op on every backend (and PyTorch, if installed)",
                       parents=[_DEBUG])
    b.add_argument("--backends", nargs="+", choices=["numpy", "rust", "cupy"],
                   help="backends to time (default: every available one)")
    b.add_argument("--repeat", type=_positive_int, default=5, help="timings per op; the best is kept")
    b.add_argument("--threads", type=_int_in(0, MAX_THREADS), default=0,
                   help="rust thread pool size (default 0: all cores)")
    b.add_argument("--no-torch", action="store_true", help="leave PyTorch out even if installed")
    b.add_argument("--no-train", action="store_true", help="skip the training-throughput table")
    b.add_argument("--train-steps", type=_positive_int, default=3,
                   help="timed training steps per backend (after one warm-up step)")
    d = sub.add_parser("demo", help="train a small GPT on addition, then generate (about a minute)",
                       parents=[_DEBUG])
    d.add_argument("--backend", choices=["numpy", "rust", "cupy"], default=None,
                   help="backend to train on (default: the fastest available)")
    d.add_argument("--digits", type=_int_in(1, 9), default=3, help="digits per operand (1-9)")
    d.add_argument("--steps", type=_positive_int, default=1800, help="training steps")
    d.add_argument("--seed", type=_non_negative_int, default=0)
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    e = sub.add_parser("embed", help="sentence embeddings with all-MiniLM-L6-v2: cosine similarities",
                       parents=[_DEBUG])
    e.add_argument("sentences", nargs="+", help="sentences to compare")
    e.add_argument("--backend", choices=["numpy", "rust", "cupy"], default=None)
    c = sub.add_parser("chat", help="answer a question with SmolLM2-135M-Instruct (greedy)",
                       parents=[_DEBUG])
    c.add_argument("question")
    c.add_argument("--backend", choices=["numpy", "rust", "cupy"], default=None)
    c.add_argument("--max-new-tokens", type=_positive_int, default=64)
    c.add_argument("--verbose", action="store_true", help="print the time taken to stderr")
    _add_train_parser(sub)
    _add_generate_parser(sub)
    _add_inspect_parser(sub)
    return p


def _int_in(low, high=None):
    """An argparse type: an integer in [low, high] (no upper bound when high is None)."""
    kind = {0: "non-negative", 1: "positive"}.get(low, "") if high is None else ""

    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if v < low or (high is not None and v > high):
            rule = f"a {kind} integer" if kind else f"an integer in {low}..{high}"
            raise argparse.ArgumentTypeError(f"must be {rule}, got {v}")
        return v

    return parse


_positive_int, _non_negative_int = _int_in(1), _int_in(0)


def _positive_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v


def _add_train_parser(sub):
    d = RUN_DEFAULTS
    t = sub.add_parser(
        "train", help="train a small model on a built-in task, with checkpoints and resume",
        parents=[_DEBUG],
        description="Train GPT, Llama or an encoder-decoder Transformer on a built-in task "
                    "(generated on the fly; bytes: the Python standard library's sources). "
                    "With --resume the run's settings come from its latest checkpoint; a "
                    "setting given again must agree, and --steps may extend the run.")
    t.add_argument("--task", choices=TASKS, default=None,
                   help=f"copy, reverse, addition, or bytes (a byte-level LM) (default {d['task']})")
    t.add_argument("--model", choices=ARCHS, default=None,
                   help=f"architecture; transformer (encoder-decoder) for copy, reverse and "
                        f"addition only (default {d['model']})")
    t.add_argument("--layers", type=_positive_int, default=None,
                   help=f"layers (per stack for transformer) (default {d['layers']})")
    t.add_argument("--d-model", type=_positive_int, default=None, help=f"width (default {d['d_model']})")
    t.add_argument("--heads", type=_positive_int, default=None, help=f"attention heads (default {d['heads']})")
    t.add_argument("--steps", type=_positive_int, default=None,
                   help=f"optimizer steps in all (default {d['steps']}; with --resume: the run's)")
    t.add_argument("--batch-size", type=_positive_int, default=None, help=f"(default {d['batch_size']})")
    t.add_argument("--lr", type=_positive_float, default=None,
                   help=f"peak learning rate, cosine decay to lr/20 (default {d['lr']})")
    t.add_argument("--seed", type=_non_negative_int, default=None, help=f"(default {d['seed']})")
    t.add_argument("--digits", type=_int_in(1, 9), default=None,
                   help=f"addition: digits per operand, 1-9 (default {d['digits']})")
    t.add_argument("--length", type=_positive_int, default=None,
                   help=f"copy / reverse: longest sequence (default {d['length']})")
    t.add_argument("--seq-len", type=_positive_int, default=None,
                   help=f"bytes: training window and context length (default {d['seq_len']})")
    t.add_argument("--backend", choices=["numpy", "rust", "cupy"], default=None,
                   help="default: the fastest available")
    t.add_argument("--checkpoint-dir", metavar="DIR", default=None,
                   help="save step-NNNNNNNN.safetensors here (the last 3 are kept)")
    t.add_argument("--checkpoint-every", type=_positive_int, default=100, metavar="N",
                   help="steps between checkpoints (default 100; one is always saved at the end)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --checkpoint-dir from its latest checkpoint")
    t.add_argument("--plot", metavar="PATH", default=None,
                   help='write the loss curve as a PNG (needs pip install "ferroformer[plot]")')
    t.add_argument("--eval-examples", type=_non_negative_int, default=500, metavar="N",
                   help="held-out examples for the exact-match score (0: skip)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_generate_parser(sub):
    g = sub.add_parser(
        "generate", help="continue a prompt with a model saved by `train`", parents=[_DEBUG],
        description="Load a checkpoint written by `python -m ferroformer train` and complete a "
                    "prompt in the way its task reads text: bytes: any text; addition: "
                    "'12+34'; copy / reverse: digits, e.g. '31415'.")
    g.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="a checkpoint file, or a --checkpoint-dir (its latest checkpoint)")
    g.add_argument("--prompt", required=True, help="the text to continue")
    g.add_argument("--max-new-tokens", type=_positive_int, default=None,
                   help="default: the task's answer length (bytes: half the context, at most 64)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    g.add_argument("--top-k", type=_positive_int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--seed", type=_non_negative_int, default=None,
                   help="seed for sampling (reproducible output)")
    g.add_argument("--backend", choices=["numpy", "rust", "cupy"], default=None)



def _add_inspect_parser(sub):
    i = sub.add_parser(
        "inspect", help="attention entropy per head, and an attention map, for a `train` checkpoint",
        parents=[_DEBUG],
        description="Runs the model of a `train` checkpoint on a prompt plus its own greedy "
                    "answer and prints the entropy of every attention head; --plot draws the "
                    "attention of one layer (all heads) as a PNG.")
    i.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="a checkpoint file, or a --checkpoint-dir (its latest checkpoint)")
    i.add_argument("--prompt", required=True, help="as for generate")
    i.add_argument("--layer", type=int, default=0, help="layer to plot (default 0; -1: the last)")
    i.add_argument("--kind", choices=["self", "cross"], default="self",
                   help="transformer: self- or cross-attention to plot")
    i.add_argument("--stack", choices=["encoder", "decoder"], default=None,
                   help="transformer: which stack to plot (default: encoder for self, decoder for cross)")
    i.add_argument("--plot", metavar="PATH", default=None,
                   help='write the attention map as a PNG (needs pip install "ferroformer[plot]")')
    i.add_argument("--backend", choices=["numpy", "rust", "cupy"], default=None)
