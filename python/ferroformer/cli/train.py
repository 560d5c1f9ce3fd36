"""The commands on small models of one's own: ``train`` (a built-in task, with
checkpoints and exact resume), ``generate`` and ``inspect`` (a ``train``
checkpoint). Settings, checks and file handling are in runs.py."""

from __future__ import annotations

import math
import os
import time

from .runs import (
    RUN_DEFAULTS,
    check_memory,
    check_output,
    check_run,
    check_writable,
    checkpoints,
    decode_answer,
    encode_prompt,
    find_checkpoint,
    make_model,
    make_task,
    run_trainer_class,
    seq_lens,
    stored_run,
    stored_schedule,
    token_label,
)


def train(args) -> int:
    import numpy as np

    from .. import backend as get_backend
    from ..checkpoint import load_checkpoint
    from ..train import AdamW, LRSchedule, NonFiniteError

    if args.plot:                            # fail before training, not after
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
            raise FileNotFoundError(f"{directory}: no checkpoint (step-*.safetensors) to resume from")
        path = existing[-1][1]
        ckpt = load_checkpoint(path, backend=ops)
        run = stored_run(ckpt, path)
        for key, stored in run.items():
            given = getattr(args, key)
            if key != "steps" and given is not None and given != stored:
                raise ValueError(f"--{key.replace('_', '-')} {given} differs from the run in "
                                 f"{directory} ({stored}); leave it out to resume")
        model = ckpt.model
        schedule = stored_schedule(ckpt.extra, path)
        if args.steps is not None and args.steps < ckpt.step:
            raise ValueError(f"--steps {args.steps} is below step {ckpt.step}, which the run in "
                             f"{directory} has reached")
        check_writable(directory)
    else:
        if existing:
            raise ValueError(f"{directory} already holds checkpoints (up to step {existing[-1][0]}); "
                             "add --resume to continue that run, or choose another directory")
        run = {k: getattr(args, k) if getattr(args, k) is not None else v
               for k, v in RUN_DEFAULTS.items()}
        check_run(run)
        check_memory(run)
        if directory:
            check_writable(directory)
        model = make_model(run, ops)
        schedule = LRSchedule(run["lr"], min(100, run["steps"] // 10), run["steps"], "cosine",
                              run["lr"] / 20)
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
    trainer = run_trainer_class()(model, optimizer, counted, seed=run["seed"], grad_clip=1.0,
                                   schedule=schedule, checkpoint_path=directory,
                                   checkpoint_every=args.checkpoint_every if directory else 0,
                                   progress=not args.no_progress)
    trainer.run = run
    if args.resume:
        trainer.resume(path)
        trainer.history = [(int(s), float(v)) for s, v in ckpt.extra.get("history", [])
                           if s <= trainer.step]
    start = trainer.step
    print(f"ferroformer train: {type(model).__name__} ({model.num_parameters():,} parameters, "
          f"{run['layers']} layers, d_model {run['d_model']}, {run['heads']} heads) on "
          f"{run['task']}, {ops.name} backend, steps {start + 1}..{steps}", flush=True)
    t0 = time.perf_counter()
    try:
        trainer.fit(steps)
    except NonFiniteError as e:
        kept = checkpoints(directory) if directory else []
        where = f"the last good checkpoint is {kept[-1][1]}" if kept else "no checkpoint was written"
        e.args = (f"{e.args[0]}; {where}",)
        raise
    train_s = time.perf_counter() - t0
    if directory and (not checkpoints(directory) or checkpoints(directory)[-1][0] != trainer.step):
        trainer.save(directory)
    if trainer.step > start:
        print(f"trained {trainer.step - start} steps in {train_s:.1f} s: "
              f"{tokens[0] / train_s:,.0f} tokens/s")
    if trainer.history:
        print(f"final loss {trainer.history[-1][1]:.4f} (step {trainer.history[-1][0]})")
    rng = np.random.default_rng(run["seed"] + 1)
    if run["task"] == "bytes":
        print(f"validation loss {task.evaluate(model, run['seq_len']):.4f} nats/byte "
              f"(unigram entropy {task.unigram_entropy():.4f})")
    elif args.eval_examples:
        test = task.test_examples(args.eval_examples, rng)
        acc = (task.evaluate_seq2seq if run["model"] == "transformer" else task.evaluate_lm)(model, test)
        print(f"exact match on {len(test)} held-out examples: {acc:.1%}")
    if directory:
        print(f"checkpoint: {checkpoints(directory)[-1][1]}")
    if args.plot:
        from ..plots import plot_loss

        title = f"{run['task']} / {run['model']}: training loss"
        print(f"loss curve: {plot_loss(trainer.history, args.plot, title=title)}")
    return 0


def generate(args) -> int:
    import numpy as np

    from ..checkpoint import load_checkpoint
    from ..data.tasks import BOS, EOS, SEP

    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise ValueError(f"--temperature must be >= 0 (and finite), got {args.temperature}")
    path = find_checkpoint(args.checkpoint)
    ckpt = load_checkpoint(path, backend=args.backend)
    run = stored_run(ckpt, path)
    model = ckpt.model
    x = encode_prompt(run, args.prompt)
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    if run["model"] == "transformer":
        n = args.max_new_tokens or seq_lens(run)[1] + 1
        out = model.generate(np.asarray([x], np.int64), max_len=n, bos_id=BOS, eos_id=EOS, **sampling)
    else:
        limit = int(model.config["max_seq_len"])
        if run["task"] == "bytes":
            n, eos, prompt = args.max_new_tokens or min(64, limit // 2), None, x
            if n >= limit:
                raise ValueError(f"--max-new-tokens {n} must be below the model's context of "
                                 f"{limit} tokens")
            prompt = prompt[-(limit - n):]       # the context holds the last bytes of the prompt
        else:
            n, eos, prompt = args.max_new_tokens or seq_lens(run)[1] + 1, EOS, [BOS, *x, SEP]
            if len(prompt) + n > limit:
                raise ValueError(f"--max-new-tokens {n} exceeds the model's context of {limit} "
                                 f"tokens after the {len(prompt)}-token prompt")
        out = model.generate(np.asarray([prompt], np.int64), max_new_tokens=n, eos_id=eos, **sampling)
    row = [int(t) for t in out[0]]  # generate returns host int64 arrays
    if EOS in row and run["task"] != "bytes":
        row = row[: row.index(EOS)]
    print(decode_answer(run, args.prompt, row))
    return 0


def inspect(args) -> int:
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
        answer = [int(t) for t in np.asarray(model.generate(
            src, max_len=seq_lens(run)[1] + 1, bos_id=BOS, eos_id=EOS))[0]]
        tgt = [BOS, *answer[: answer.index(EOS) if EOS in answer else None]]
        inputs, seqs = (src, np.asarray([tgt], np.int64)), {"encoder": x, "decoder": tgt}
        layers = {"encoder": len(model.encoder), "decoder": len(model.decoder)}
    else:
        if run["task"] == "bytes":
            seq = x[-int(model.config["max_seq_len"]):]
        else:
            prompt = [BOS, *x, SEP]
            answer = [int(t) for t in np.asarray(model.generate(
                np.asarray([prompt]), max_new_tokens=seq_lens(run)[1] + 1, eos_id=EOS))[0]]
            seq = prompt + answer[: answer.index(EOS) if EOS in answer else None]
        inputs, seqs, layers = (np.asarray([seq], np.int64),), {None: seq}, {None: len(model.blocks)}
    print("tokens: " + " ".join(f"{s or 'input'} [{' '.join(token_label(run, t) for t in q)}]"
                                for s, q in seqs.items()))
    print("attention entropy per head, mean over queries (nats; 0: one key, log n: n keys alike):")
    for stack, n in layers.items():
        kinds = ["self", "cross"] if stack == "decoder" else ["self"]
        for kind in kinds:
            for layer in range(n):
                w = attention_weights(model, *inputs, layer=layer, kind=kind, stack=stack)
                name = " ".join(p for p in (stack, kind if stack else None, f"layer {layer}") if p)
                print(f"  {name:<22} " + "  ".join(f"h{h} {e:.3f}"
                                                  for h, e in enumerate(attention_entropy(w)[0])))
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
        print("attention map: " + plot_attention(
            w[0], args.plot, tokens_q=[token_label(run, t) for t in q],
            tokens_k=[token_label(run, t) for t in k], title=title))
    return 0
