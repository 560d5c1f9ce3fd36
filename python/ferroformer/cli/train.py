"""``train``: a small GPT, Llama or encoder-decoder Transformer on a built-in task,
with checkpoints and exact resume (settings and checks in runs.py)."""

from __future__ import annotations

import os
import time

from .args import add_backend, add_command, int_in, non_negative_int, positive_float, positive_int
from .runs import (
    ARCHS,
    RUN_DEFAULTS,
    TASKS,
    check_memory,
    check_output,
    check_run,
    check_writable,
    checkpoints,
    make_model,
    make_task,
    run_trainer_class,
    stored_run,
    stored_schedule,
)

# the run's settings, in RUN_DEFAULTS (help texts: "{}" is where the default goes)
_SETTINGS = (
    (
        "--task",
        dict(choices=TASKS),
        "copy, reverse, addition, or bytes (a byte-level LM) (default {})",
    ),
    (
        "--model",
        dict(choices=ARCHS),
        "architecture; transformer (encoder-decoder) for copy, reverse and addition only "
        "(default {})",
    ),
    ("--layers", dict(type=positive_int), "layers (per stack for transformer) (default {})"),
    ("--d-model", dict(type=positive_int), "width (default {})"),
    ("--heads", dict(type=positive_int), "attention heads (default {})"),
    (
        "--steps",
        dict(type=positive_int),
        "optimizer steps in all (default {}; with --resume: the run's)",
    ),
    ("--batch-size", dict(type=positive_int), "(default {})"),
    ("--lr", dict(type=positive_float), "peak learning rate, cosine decay to lr/20 (default {})"),
    ("--seed", dict(type=non_negative_int), "(default {})"),
    ("--digits", dict(type=int_in(1, 9)), "addition: digits per operand, 1-9 (default {})"),
    ("--length", dict(type=positive_int), "copy / reverse: longest sequence (default {})"),
    (
        "--seq-len",
        dict(type=positive_int),
        "bytes: training window and context length (default {})",
    ),
)


def add_parser(sub) -> None:
    d = RUN_DEFAULTS
    t = add_command(
        sub,
        "train",
        "train a small model on a built-in task, with checkpoints and resume",
        description="Train GPT, Llama or an encoder-decoder Transformer on a built-in task "
        "(generated on the fly; bytes: the Python standard library's sources). "
        "With --resume the run's settings come from its latest checkpoint; a "
        "setting given again must agree, and --steps may extend the run.",
    )
    for flag, kind, text in _SETTINGS:  # None when not given: --resume tells them apart
        t.add_argument(flag, **kind, default=None, help=text.format(d[flag[2:].replace("-", "_")]))
    add_backend(t, help="default: the fastest available")
    t.add_argument(
        "--checkpoint-dir",
        metavar="DIR",
        default=None,
        help="save step-NNNNNNNN.safetensors here (the last 3 are kept)",
    )
    t.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=100,
        metavar="N",
        help="steps between checkpoints (default 100; one is always saved at the end)",
    )
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --checkpoint-dir from its latest checkpoint",
    )
    t.add_argument(
        "--plot",
        metavar="PATH",
        default=None,
        help='write the loss curve as a PNG (needs pip install "ferroformer[plot]")',
    )
    t.add_argument(
        "--eval-examples",
        type=non_negative_int,
        default=500,
        metavar="N",
        help="held-out examples for the exact-match score (0: skip)",
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    import numpy as np

    from .. import backend as get_backend
    from ..checkpoint import load_checkpoint
    from ..train import AdamW, LRSchedule, NonFiniteError

    if args.plot:  # fail before training, not after
        from ..plots import INSTALL_HINT

        check_output("--plot", args.plot)
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ImportError(INSTALL_HINT) from None
    ops = get_backend(args.backend)
    directory = args.checkpoint_dir
    if directory and os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"--checkpoint-dir {directory} is a file, not a directory")
    existing = checkpoints(directory) if directory else []
    if args.resume:
        if not directory:
            raise ValueError("--resume needs --checkpoint-dir DIR")
        if not existing:
            raise FileNotFoundError(
                f"{directory}: no checkpoint (step-*.safetensors) to resume from"
            )
        path = existing[-1][1]
        ckpt = load_checkpoint(path, backend=ops)
        run = stored_run(ckpt, path)
        for key, stored in run.items():
            given = getattr(args, key)
            if key != "steps" and given is not None and given != stored:
                raise ValueError(
                    f"--{key.replace('_', '-')} {given} differs from the run in "
                    f"{directory} ({stored}); leave it out to resume"
                )
        model = ckpt.model
        schedule = stored_schedule(ckpt.extra, path)
        if args.steps is not None and args.steps < ckpt.step:
            raise ValueError(
                f"--steps {args.steps} is below step {ckpt.step}, which the run in "
                f"{directory} has reached"
            )
        check_writable(directory)
    else:
        if existing:
            raise ValueError(
                f"{directory} already holds checkpoints (up to step {existing[-1][0]}); "
                "add --resume to continue that run, or choose another directory"
            )
        run = {
            k: getattr(args, k) if getattr(args, k) is not None else v
            for k, v in RUN_DEFAULTS.items()
        }
        check_run(run)
        check_memory(run)
        if directory:
            check_writable(directory)
        model = make_model(run, ops)
        schedule = LRSchedule(
            run["lr"], min(100, run["steps"] // 10), run["steps"], "cosine", run["lr"] / 20
        )
    steps = run["steps"] if args.steps is None else args.steps
    task = make_task(run)
    if run["task"] == "bytes":
        batch_fn = task.batch_fn(run["batch_size"], run["seq_len"])
    elif run["model"] == "transformer":
        batch_fn = task.seq2seq_batch_fn(run["batch_size"])
    else:
        batch_fn = task.lm_batch_fn(run["batch_size"])
    tokens = [0]

    def counted(rng):
        batch = batch_fn(rng)
        tokens[0] += int(batch["targets"].size)
        return batch

    optimizer = AdamW(model, lr=run["lr"], betas=(0.9, 0.98), weight_decay=0.1)
    trainer = run_trainer_class()(
        model,
        optimizer,
        counted,
        seed=run["seed"],
        grad_clip=1.0,
        schedule=schedule,
        checkpoint_path=directory,
        checkpoint_every=args.checkpoint_every if directory else 0,
        progress=not args.no_progress,
    )
    trainer.run = run
    if args.resume:
        trainer.resume(path)
        trainer.history = [
            (int(s), float(v)) for s, v in ckpt.extra.get("history", []) if s <= trainer.step
        ]
    start = trainer.step
    print(
        f"ferroformer train: {type(model).__name__} ({model.num_parameters():,} parameters, "
        f"{run['layers']} layers, d_model {run['d_model']}, {run['heads']} heads) on "
        f"{run['task']}, {ops.name} backend, steps {start + 1}..{steps}",
        flush=True,
    )
    t0 = time.perf_counter()
    try:
        trainer.fit(steps)
    except NonFiniteError as e:
        kept = checkpoints(directory) if directory else []
        where = (
            f"the last good checkpoint is {kept[-1][1]}" if kept else "no checkpoint was written"
        )
        e.args = (f"{e.args[0]}; {where}",)
        raise
    train_s = time.perf_counter() - t0
    if directory and (not checkpoints(directory) or checkpoints(directory)[-1][0] != trainer.step):
        trainer.save(directory)
    if trainer.step > start:
        print(
            f"trained {trainer.step - start} steps in {train_s:.1f} s: "
            f"{tokens[0] / train_s:,.0f} tokens/s"
        )
    if trainer.history:
        print(f"final loss {trainer.history[-1][1]:.4f} (step {trainer.history[-1][0]})")
    rng = np.random.default_rng(run["seed"] + 1)
    if run["task"] == "bytes":
        print(
            f"validation loss {task.evaluate(model, run['seq_len']):.4f} nats/byte "
            f"(unigram entropy {task.unigram_entropy():.4f})"
        )
    elif args.eval_examples:
        test = task.test_examples(args.eval_examples, rng)
        acc = (task.evaluate_seq2seq if run["model"] == "transformer" else task.evaluate_lm)(
            model, test
        )
        print(f"exact match on {len(test)} held-out examples: {acc:.1%}")
    if directory:
        print(f"checkpoint: {checkpoints(directory)[-1][1]}")
    if args.plot:
        from ..plots import plot_loss

        title = f"{run['task']} / {run['model']}: training loss"
        print(f"loss curve: {plot_loss(trainer.history, args.plot, title=title)}")
    return 0
