"""The command line: ``python -m ferroformer <command>``; ``--help`` on each.

Every failure is one ``error:`` line on stderr: exit code 2 for a bad argument
(argparse's usage errors), 1 for a failure while running, 130 for Ctrl-C;
``--debug`` prints the traceback as well."""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import stat
import sys
import tempfile
import time
import traceback
from typing import List, Optional


def _cmd_bench(args) -> int:
    from . import available_backends, set_num_threads
    from .bench import format_table, run_table

    if args.threads:
        set_num_threads(args.threads)
    backends = args.backends or [b for b in available_backends() if b in ("numpy", "rust", "cupy")]
    print(f"ferroformer op benchmark on {platform.processor() or platform.machine()}, "
          f"backends {', '.join(backends)} (best of {args.repeat})", flush=True)
    print(format_table(run_table(backends, repeat=args.repeat, with_torch=not args.no_torch)))
    if args.no_train:
        return 0
    from .bench_train import SIZE, format_train_table, run_train_table, torch_available

    names = backends + (["torch"] if not args.no_torch and torch_available() else [])
    print(f"\ntraining throughput, {SIZE} (mean of {args.train_steps} steps)", flush=True)
    print(format_train_table(run_train_table(names, rounds=args.train_steps)))
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(backend=args.backend, n_digits=args.digits, steps=args.steps, seed=args.seed,
             progress=not args.no_progress)
    return 0


def _cmd_embed(args) -> int:
    from .pretrained import load
    from .pretrained.minilm import embed

    model, tok = load("all-MiniLM-L6-v2", backend=args.backend)
    e = embed(model, tok, args.sentences)
    sim = e @ e.T
    width = max(len(s) for s in args.sentences)
    print("cosine similarity (all-MiniLM-L6-v2)")
    for i, s in enumerate(args.sentences):
        print(f"{s:<{width}}  " + "  ".join(f"{v:6.4f}" for v in sim[i]))
    return 0


def _cmd_chat(args) -> int:
    from .pretrained import load
    from .pretrained.smollm import chat

    model, tok = load("SmolLM2-135M-Instruct", backend=args.backend)
    t0 = time.perf_counter()
    chat(model, tok, args.question, max_new_tokens=args.max_new_tokens,
         stream=lambda piece: print(piece, end="", flush=True))
    print()
    if args.verbose:
        print(f"({time.perf_counter() - t0:.2f} s)", file=sys.stderr)
    return 0


# -- train / generate: small models on the built-in tasks ---------------------------------
TASKS = ("copy", "reverse", "addition", "bytes")
ARCHS = ("gpt", "llama", "transformer")
# the settings that define a run; stored in every checkpoint and checked on --resume
RUN_DEFAULTS = {"task": "addition", "model": "gpt", "layers": 2, "d_model": 64, "heads": 4,
                "batch_size": 64, "lr": 1e-2, "seed": 0, "digits": 2, "length": 8, "seq_len": 64,
                "steps": 800}
CHECKPOINT_NAME = re.compile(r"^step-(\d{8})\.safetensors$")
KEEP_CHECKPOINTS = 3
SYMBOLS = "0123456789"  # copy / reverse symbols as typed on the command line


def _make_task(run):
    from .data import AdditionTask, ByteLMDataset, CopyTask, ReverseTask

    if run["task"] == "bytes":
        return ByteLMDataset(max_bytes=1 << 20)
    if run["task"] == "addition":
        return AdditionTask(n_digits=run["digits"])
    cls = CopyTask if run["task"] == "copy" else ReverseTask
    return cls(n_symbols=len(SYMBOLS), max_len=run["length"])


def _vocab_size(run) -> int:
    from .data.tasks import N_SPECIAL

    return {"bytes": 256, "addition": N_SPECIAL + 11}.get(run["task"], N_SPECIAL + len(SYMBOLS))


def _seq_lens(run):
    """(source length, target length) of a task's examples; bytes: (seq_len, 0)."""
    if run["task"] == "bytes":
        return run["seq_len"], 0
    if run["task"] == "addition":
        return 2 * run["digits"] + 1, run["digits"] + 1
    return run["length"], run["length"]


def _model_spec(run):
    """(model class, its constructor's keyword arguments) for a run's settings."""
    from .data.tasks import PAD
    from .models import GPT, Llama, Transformer

    src_len, tgt_len = _seq_lens(run)
    v, d = _vocab_size(run), run["d_model"]
    if run["model"] == "transformer":
        return Transformer, dict(src_vocab_size=v, tgt_vocab_size=v, d_model=d, n_heads=run["heads"],
                                 n_encoder_layers=run["layers"], n_decoder_layers=run["layers"],
                                 d_ff=4 * d, dropout=0.0, max_seq_len=max(src_len, tgt_len + 2),
                                 pad_id=PAD)
    # BOS x SEP y EOS; one position more so that generation may also feed the final EOS
    t = src_len if run["task"] == "bytes" else src_len + tgt_len + 4
    return (GPT if run["model"] == "gpt" else Llama), dict(
        vocab_size=v, max_seq_len=t, d_model=d, n_heads=run["heads"], n_layers=run["layers"])


def _make_model(run, backend):
    cls, kw = _model_spec(run)
    return cls(**kw, backend=backend, rng=run["seed"])


def _training_bytes(run) -> int:
    """A lower bound on the memory one training step of the run takes (float32):
    weights, gradients and two AdamW moments per parameter, counting 12 d^2 per
    layer and the embeddings, plus a small share of the activations backward keeps."""
    src_len, tgt_len = _seq_lens(run)
    d, v = run["d_model"], _vocab_size(run)
    if run["model"] == "transformer":
        layers, t = 2 * run["layers"], max(src_len, tgt_len + 1)
    else:
        layers, t = run["layers"], src_len if run["task"] == "bytes" else src_len + tgt_len + 2
    params = layers * 12 * d * d + 2 * v * d + t * d
    activations = run["batch_size"] * t * (layers * 8 * d + 2 * v)
    return 4 * (4 * params + activations)


def _check_memory(run) -> None:
    """Refuses a run that cannot fit in this machine's memory, before allocating any of it."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return                                # no sysconf (Windows): MemoryError will tell
    need = _training_bytes(run)
    if need > total:
        raise MemoryError(f"this run needs at least {need / 2**30:,.1f} GiB to train, more than the "
                          f"{total / 2**30:,.1f} GiB of memory here; choose a smaller --d-model, "
                          "--layers, --batch-size or sequence length")


def _check_run(run) -> None:
    """The settings of a run (given or stored in a checkpoint) are of the right types
    and ranges; ValueError naming the flag otherwise."""
    for k in ("task", "model"):
        choices = TASKS if k == "task" else ARCHS
        if run[k] not in choices:
            raise ValueError(f"--{k} must be one of {', '.join(choices)}, got {run[k]!r}")
    if run["model"] == "transformer" and run["task"] == "bytes":
        raise ValueError("--model transformer needs a seq2seq task (copy, reverse, addition); "
                         "for --task bytes use gpt or llama")
    for k in ("layers", "d_model", "heads", "batch_size", "digits", "length", "seq_len", "steps"):
        if type(run[k]) is not int or run[k] < 1:
            raise ValueError(f"--{k.replace('_', '-')} must be a positive integer, got {run[k]!r}")
    if type(run["seed"]) is not int or run["seed"] < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {run['seed']!r}")
    if run["d_model"] % run["heads"]:
        raise ValueError(f"--d-model {run['d_model']} is not divisible by --heads {run['heads']}")
    if type(run["lr"]) not in (int, float) or not (math.isfinite(run["lr"]) and run["lr"] > 0):
        raise ValueError(f"--lr must be a finite number > 0, got {run['lr']!r}")
    if not 1 <= run["digits"] <= 9:
        raise ValueError(f"--digits must be in 1..9, got {run['digits']}")


def _checkpoints(directory):
    """[(step, path)] of the run's checkpoints in ``directory``, oldest first; entries
    that are not regular files (a directory or FIFO of that name) do not count."""
    if not os.path.isdir(directory):
        return []
    found = [(int(m.group(1)), os.path.join(directory, name))
             for name in os.listdir(directory) if (m := CHECKPOINT_NAME.match(name))]
    return sorted((step, path) for step, path in found if os.path.isfile(path))


def _find_checkpoint(path) -> str:
    """A checkpoint file, or the latest step-*.safetensors in a directory. Anything
    else (FIFO, device) is refused without opening it, since reading one may block."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such checkpoint file or directory") from None
    if stat.S_ISDIR(mode):
        found = _checkpoints(path)
        if not found:
            raise FileNotFoundError(f"{path}: no checkpoint (step-*.safetensors) in this directory")
        return found[-1][1]
    if not stat.S_ISREG(mode):
        raise ValueError(f"{path}: not a regular file (a FIFO, socket or device), so not a checkpoint")
    return path


def _stored_run(ckpt, path) -> dict:
    """The `train` settings stored in a loaded checkpoint, checked against its model."""
    extra = ckpt.extra
    run = extra.get("run") if isinstance(extra, dict) else None
    if not isinstance(run, dict) or set(run) != set(RUN_DEFAULTS):
        raise ValueError(f"{path}: holds no valid `python -m ferroformer train` settings "
                         "(was it written by something else?)")
    try:
        _check_run(run)
    except ValueError as e:
        raise ValueError(f"{path}: its stored `train` settings are invalid: {e}") from None
    cls, kw = _model_spec(run)
    model = ckpt.model
    if type(model) is not cls or any(model.config.get(k) != v for k, v in kw.items()):
        raise ValueError(f"{path}: its model ({type(model).__name__}) does not match the `train` "
                         f"settings stored with it (--model {run['model']} --task {run['task']}); "
                         "was it written by something else?")
    return run


def _stored_schedule(extra, path):
    from .train import LRSchedule

    keys = {"base_lr", "warmup_steps", "total_steps", "decay", "min_lr"}
    config = extra.get("schedule")
    if not isinstance(config, dict) or set(config) != keys:
        raise ValueError(f"{path}: holds no valid learning-rate schedule")
    try:
        return LRSchedule(**config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: its learning-rate schedule is invalid: {e}") from None


def _check_output(flag, path) -> None:
    """An output file's folder exists and the path is not a directory: fail before the work."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{flag} {path}: the directory {folder} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{flag} {path}: is a directory; give a file name")


def _check_writable(directory) -> None:
    """Creates the checkpoint directory and writes a scratch file there, so that an
    unwritable one fails now rather than at the first save."""
    os.makedirs(directory, exist_ok=True)
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise OSError(f"--checkpoint-dir {directory}: cannot write there ({e.strerror or e})") from None


def _run_trainer_class():
    from .train import Trainer

    class RunTrainer(Trainer):
        """A Trainer whose checkpoint_path is a directory: each save writes
        step-NNNNNNNN.safetensors there (keeping the last few) with the run's settings
        and loss history beside the schedule, so that --resume and generate need
        nothing else."""

        run: dict = None

        def checkpoint_extra(self) -> dict:
            history = [[int(s), float(v)] for s, v in self.history]
            return {**super().checkpoint_extra(), "run": self.run, "history": history}

        def save(self, directory) -> None:
            super().save(os.path.join(directory, f"step-{self.step:08d}.safetensors"))
            for _, old in _checkpoints(directory)[:-KEEP_CHECKPOINTS]:
                os.unlink(old)

    return RunTrainer


def _cmd_train(args) -> int:
    import numpy as np

    from . import backend as get_backend
    from .checkpoint import load_checkpoint
    from .train import AdamW, LRSchedule, NonFiniteError

    if args.plot:                            # fail before training, not after
        from .plots import INSTALL_HINT

        _check_output("--plot", args.plot)
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ImportError(INSTALL_HINT) from None
    ops = get_backend(args.backend)
    directory = args.checkpoint_dir
    if directory and os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"--checkpoint-dir {directory} is a file, not a directory")
    existing = _checkpoints(directory) if directory else []
    if args.resume:
        if not directory:
            raise ValueError("--resume needs --checkpoint-dir DIR")
        if not existing:
            raise FileNotFoundError(f"{directory}: no checkpoint (step-*.safetensors) to resume from")
        path = existing[-1][1]
        ckpt = load_checkpoint(path, backend=ops)
        run = _stored_run(ckpt, path)
        for key, stored in run.items():
            given = getattr(args, key)
            if key != "steps" and given is not None and given != stored:
                raise ValueError(f"--{key.replace('_', '-')} {given} differs from the run in "
                                 f"{directory} ({stored}); leave it out to resume")
        model = ckpt.model
        schedule = _stored_schedule(ckpt.extra, path)
        if args.steps is not None and args.steps < ckpt.step:
            raise ValueError(f"--steps {args.steps} is below step {ckpt.step}, which the run in "
                             f"{directory} has reached")
        _check_writable(directory)
    else:
        if existing:
            raise ValueError(f"{directory} already holds checkpoints (up to step {existing[-1][0]}); "
                             "add --resume to continue that run, or choose another directory")
        run = {k: getattr(args, k) if getattr(args, k) is not None else v
               for k, v in RUN_DEFAULTS.items()}
        _check_run(run)
        _check_memory(run)
        if directory:
            _check_writable(directory)
        model = _make_model(run, ops)
        schedule = LRSchedule(run["lr"], min(100, run["steps"] // 10), run["steps"], "cosine",
                              run["lr"] / 20)
    steps = run["steps"] if args.steps is None else args.steps
    task = _make_task(run)
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
    trainer = _run_trainer_class()(model, optimizer, counted, seed=run["seed"], grad_clip=1.0,
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
        kept = _checkpoints(directory) if directory else []
        where = f"the last good checkpoint is {kept[-1][1]}" if kept else "no checkpoint was written"
        e.args = (f"{e.args[0]}; {where}",)
        raise
    train_s = time.perf_counter() - t0
    if directory and (not _checkpoints(directory) or _checkpoints(directory)[-1][0] != trainer.step):
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
        print(f"checkpoint: {_checkpoints(directory)[-1][1]}")
    if args.plot:
        from .plots import plot_loss

        title = f"{run['task']} / {run['model']}: training loss"
        print(f"loss curve: {plot_loss(trainer.history, args.plot, title=title)}")
    return 0


def _encode_prompt(run, text):
    """The task's tokens for a prompt: bytes as UTF-8; addition "a+b"; copy/reverse digits."""
    from .data import AdditionTask
    from .data.tasks import N_SPECIAL

    if run["task"] == "bytes":
        ids = list(text.encode("utf-8"))
        if not ids:
            raise ValueError("--prompt is empty")
        return ids
    if run["task"] == "addition":
        m = re.fullmatch(r"\s*(\d+)\s*\+\s*(\d+)\s*", text)
        n = run["digits"]
        if not m or max(len(m.group(1)), len(m.group(2))) > n:
            raise ValueError(f"--prompt must be a sum like '12+34' of numbers with at most {n} "
                             f"digits (the checkpoint learned {n}-digit addition), got {text!r}")
        return AdditionTask(n_digits=n).encode(int(m.group(1)), int(m.group(2)))[0]
    chars = [c for c in text if not c.isspace()]
    bad = sorted({c for c in chars if c not in SYMBOLS})
    if bad or not 1 <= len(chars) <= run["length"]:
        raise ValueError(f"--prompt must be 1 to {run['length']} of the symbols {SYMBOLS} for the "
                         f"{run['task']} task, got {text!r}")
    return [N_SPECIAL + SYMBOLS.index(c) for c in chars]


def _decode_answer(run, prompt, ids):
    from .data.tasks import N_SPECIAL

    if run["task"] == "bytes":
        return prompt + bytes(int(t) for t in ids).decode("utf-8", errors="replace")
    text = "".join(SYMBOLS[t - N_SPECIAL] if 0 <= t - N_SPECIAL < len(SYMBOLS) else "?" for t in ids)
    if run["task"] == "addition":
        a, b = re.fullmatch(r"\s*(\d+)\s*\+\s*(\d+)\s*", prompt).groups()
        text = text[::-1]                    # the task writes sums least significant digit first
        if "?" not in text:
            text = text.lstrip("0") or "0"
        return f"{int(a)} + {int(b)} = {text}"
    return text


def _cmd_generate(args) -> int:
    import numpy as np

    from .checkpoint import load_checkpoint
    from .data.tasks import BOS, EOS, SEP

    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise ValueError(f"--temperature must be >= 0 (and finite), got {args.temperature}")
    path = _find_checkpoint(args.checkpoint)
    ckpt = load_checkpoint(path, backend=args.backend)
    run = _stored_run(ckpt, path)
    model = ckpt.model
    x = _encode_prompt(run, args.prompt)
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    if run["model"] == "transformer":
        n = args.max_new_tokens or _seq_lens(run)[1] + 1
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
            n, eos, prompt = args.max_new_tokens or _seq_lens(run)[1] + 1, EOS, [BOS, *x, SEP]
            if len(prompt) + n > limit:
                raise ValueError(f"--max-new-tokens {n} exceeds the model's context of {limit} "
                                 f"tokens after the {len(prompt)}-token prompt")
        out = model.generate(np.asarray([prompt], np.int64), max_new_tokens=n, eos_id=eos, **sampling)
    row = [int(t) for t in out[0]]  # generate returns host int64 arrays
    if EOS in row and run["task"] != "bytes":
        row = row[: row.index(EOS)]
    print(_decode_answer(run, args.prompt, row))
    return 0


def _token_label(run, t: int) -> str:
    from .data.tasks import BOS, EOS, N_SPECIAL, PAD, SEP

    if run["task"] == "bytes":
        return repr(chr(t))[1:-1] if t < 128 else f"x{t:02x}"
    special = {PAD: "_", BOS: "<s>", EOS: "</s>", SEP: "="}
    if t in special:
        return special[t]
    return SYMBOLS[t - N_SPECIAL] if t - N_SPECIAL < len(SYMBOLS) else "+"


def _cmd_inspect(args) -> int:
    import numpy as np

    from .checkpoint import load_checkpoint
    from .data.tasks import BOS, EOS, SEP
    from .inspect import attention_entropy, attention_weights

    if args.plot:
        _check_output("--plot", args.plot)
    path = _find_checkpoint(args.checkpoint)
    ckpt = load_checkpoint(path, backend=args.backend)
    run = _stored_run(ckpt, path)
    model = ckpt.model
    x = _encode_prompt(run, args.prompt)
    # the attention while the model writes its own (greedy) answer to the prompt
    if run["model"] == "transformer":
        src = np.asarray([x], np.int64)
        answer = [int(t) for t in np.asarray(model.generate(
            src, max_len=_seq_lens(run)[1] + 1, bos_id=BOS, eos_id=EOS))[0]]
        tgt = [BOS, *answer[: answer.index(EOS) if EOS in answer else None]]
        inputs, seqs = (src, np.asarray([tgt], np.int64)), {"encoder": x, "decoder": tgt}
        layers = {"encoder": len(model.encoder), "decoder": len(model.decoder)}
    else:
        if run["task"] == "bytes":
            seq = x[-int(model.config["max_seq_len"]):]
        else:
            prompt = [BOS, *x, SEP]
            answer = [int(t) for t in np.asarray(model.generate(
                np.asarray([prompt]), max_new_tokens=_seq_lens(run)[1] + 1, eos_id=EOS))[0]]
            seq = prompt + answer[: answer.index(EOS) if EOS in answer else None]
        inputs, seqs, layers = (np.asarray([seq], np.int64),), {None: seq}, {None: len(model.blocks)}
    print("tokens: " + " ".join(f"{s or 'input'} [{' '.join(_token_label(run, t) for t in q)}]"
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
        from .plots import plot_attention

        stack = args.stack if run["model"] == "transformer" else None
        kind = args.kind
        if stack is None and run["model"] == "transformer":
            stack = "decoder" if kind == "cross" else "encoder"
        w = attention_weights(model, *inputs, layer=args.layer, kind=kind, stack=stack)
        q = seqs["decoder" if kind == "cross" else stack]
        k = seqs["encoder" if kind == "cross" else stack]
        title = " ".join(p for p in (stack, kind, f"layer {args.layer}") if p)
        print("attention map: " + plot_attention(
            w[0], args.plot, tokens_q=[_token_label(run, t) for t in q],
            tokens_k=[_token_label(run, t) for t in k], title=title))
    return 0


MAX_THREADS = 1024  # a rust pool beyond this is a typo, and starting it takes minutes
# --debug after the command too; SUPPRESS keeps a subcommand from resetting the global one
_DEBUG = argparse.ArgumentParser(add_help=False)
_DEBUG.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                    help="on failure, print the traceback too")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ferroformer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
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
    b.set_defaults(func=_cmd_bench)
    d = sub.add_parser("demo", help="train a small GPT on addition, then generate (about a minute)",
                       parents=[_DEBUG])
    d.add_argument("--backend", choices=["numpy", "rust", "cupy"], default=None,
                   help="backend to train on (default: the fastest available)")
    d.add_argument("--digits", type=_int_in(1, 9), default=3, help="digits per operand (1-9)")
    d.add_argument("--steps", type=_positive_int, default=1800, help="training steps")
    d.add_argument("--seed", type=_non_negative_int, default=0)
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.set_defaults(func=_cmd_demo)
    e = sub.add_parser("embed", help="sentence embeddings with all-MiniLM-L6-v2: cosine similarities",
                       parents=[_DEBUG])
    e.add_argument("sentences", nargs="+", help="sentences to compare")
    e.add_argument("--backend", choices=["numpy", "rust", "cupy"], default=None)
    e.set_defaults(func=_cmd_embed)
    c = sub.add_parser("chat", help="answer a question with SmolLM2-135M-Instruct (greedy)",
                       parents=[_DEBUG])
    c.add_argument("question")
    c.add_argument("--backend", choices=["numpy", "rust", "cupy"], default=None)
    c.add_argument("--max-new-tokens", type=_positive_int, default=64)
    c.add_argument("--verbose", action="store_true", help="print the time taken to stderr")
    c.set_defaults(func=_cmd_chat)
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
    t.set_defaults(func=_cmd_train)


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
    g.set_defaults(func=_cmd_generate)



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
    i.set_defaults(func=_cmd_inspect)


# failures whose message is meant for the user as it stands; any other exception is
# a bug, reported with its type
EXPECTED = (ValueError, OSError, RuntimeError, ImportError, IndexError, MemoryError)


def error_line(e: BaseException) -> str:
    """One line for stderr that says what went wrong."""
    if isinstance(e, OSError) and e.filename and e.strerror:
        text = f"{e.filename}: {e.strerror}"
    else:
        text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, MemoryError):
        text = f"out of memory: {text}" if str(e) else "out of memory"
    elif not isinstance(e, EXPECTED) or isinstance(e, (RecursionError, NotImplementedError)):
        text = f"unexpected {type(e).__name__}: {text} (--debug shows the traceback)"
    return f"error: {text}"


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            traceback.print_exc()
        print(error_line(e), file=sys.stderr)
        return 1
