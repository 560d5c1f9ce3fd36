"""A ``train`` run's settings and its files: the built-in tasks and models a run
names, the checks on settings (given or read back from a checkpoint), the
memory estimate, the checkpoint directory, and how prompts and answers are
written for each task. Shared by the train, generate and inspect commands."""

from __future__ import annotations

import math
import os
import re
import stat
import tempfile

TASKS = ("copy", "reverse", "addition", "bytes")
ARCHS = ("gpt", "llama", "transformer")
# the settings that define a run; stored in every checkpoint and checked on --resume
RUN_DEFAULTS = {
    "task": "addition",
    "model": "gpt",
    "layers": 2,
    "d_model": 64,
    "heads": 4,
    "batch_size": 64,
    "lr": 1e-2,
    "seed": 0,
    "digits": 2,
    "length": 8,
    "seq_len": 64,
    "steps": 800,
}
CHECKPOINT_NAME = re.compile(r"^step-(\d{8})\.safetensors$")
KEEP_CHECKPOINTS = 3
SYMBOLS = "0123456789"  # copy / reverse symbols as typed on the command line


def make_task(run):
    from ..data import AdditionTask, ByteLMDataset, CopyTask, ReverseTask

    if run["task"] == "bytes":
        return ByteLMDataset(max_bytes=1 << 20)
    if run["task"] == "addition":
        return AdditionTask(n_digits=run["digits"])
    cls = CopyTask if run["task"] == "copy" else ReverseTask
    return cls(n_symbols=len(SYMBOLS), max_len=run["length"])


def vocab_size(run) -> int:
    from ..data.tasks import N_SPECIAL

    return {"bytes": 256, "addition": N_SPECIAL + 11}.get(run["task"], N_SPECIAL + len(SYMBOLS))


def seq_lens(run):
    """(source length, target length) of a task's examples; bytes: (seq_len, 0)."""
    if run["task"] == "bytes":
        return run["seq_len"], 0
    if run["task"] == "addition":
        return 2 * run["digits"] + 1, run["digits"] + 1
    return run["length"], run["length"]


def model_spec(run):
    """(model class, its constructor's keyword arguments) for a run's settings."""
    from ..data.tasks import PAD
    from ..models import GPT, Llama, Transformer

    src_len, tgt_len = seq_lens(run)
    v, d = vocab_size(run), run["d_model"]
    if run["model"] == "transformer":
        return Transformer, dict(
            src_vocab_size=v,
            tgt_vocab_size=v,
            d_model=d,
            n_heads=run["heads"],
            n_encoder_layers=run["layers"],
            n_decoder_layers=run["layers"],
            d_ff=4 * d,
            dropout=0.0,
            max_seq_len=max(src_len, tgt_len + 2),
            pad_id=PAD,
        )
    # BOS x SEP y EOS; one position more so that generation may also feed the final EOS
    t = src_len if run["task"] == "bytes" else src_len + tgt_len + 4
    return (GPT if run["model"] == "gpt" else Llama), dict(
        vocab_size=v, max_seq_len=t, d_model=d, n_heads=run["heads"], n_layers=run["layers"]
    )


def make_model(run, backend):
    cls, kw = model_spec(run)
    return cls(**kw, backend=backend, rng=run["seed"])


def training_bytes(run) -> int:
    """A lower bound on the memory one training step of the run takes (float32):
    weights, gradients and two AdamW moments per parameter, counting 12 d^2 per
    layer and the embeddings, plus a small share of the activations backward keeps."""
    src_len, tgt_len = seq_lens(run)
    d, v = run["d_model"], vocab_size(run)
    if run["model"] == "transformer":
        layers, t = 2 * run["layers"], max(src_len, tgt_len + 1)
    else:
        layers, t = run["layers"], src_len if run["task"] == "bytes" else src_len + tgt_len + 2
    params = layers * 12 * d * d + 2 * v * d + t * d
    activations = run["batch_size"] * t * (layers * 8 * d + 2 * v)
    return 4 * (4 * params + activations)


def check_memory(run) -> None:
    """Refuses a run that cannot fit in this machine's memory, before allocating any of it."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return  # no sysconf (Windows): MemoryError will tell
    need = training_bytes(run)
    if need > total:
        raise MemoryError(
            f"this run needs at least {need / 2**30:,.1f} GiB to train, more than the "
            f"{total / 2**30:,.1f} GiB of memory here; choose a smaller --d-model, "
            "--layers, --batch-size or sequence length"
        )


def check_run(run) -> None:
    """The settings of a run (given or stored in a checkpoint) are of the right types
    and ranges; ValueError naming the flag otherwise."""
    for k in ("task", "model"):
        choices = TASKS if k == "task" else ARCHS
        if run[k] not in choices:
            raise ValueError(f"--{k} must be one of {', '.join(choices)}, got {run[k]!r}")
    if run["model"] == "transformer" and run["task"] == "bytes":
        raise ValueError(
            "--model transformer needs a seq2seq task (copy, reverse, addition); "
            "for --task bytes use gpt or llama"
        )
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


def checkpoints(directory):
    """[(step, path)] of the run's checkpoints in ``directory``, oldest first; entries
    that are not regular files (a directory or FIFO of that name) do not count."""
    if not os.path.isdir(directory):
        return []
    found = [
        (int(m.group(1)), os.path.join(directory, name))
        for name in os.listdir(directory)
        if (m := CHECKPOINT_NAME.match(name))
    ]
    return sorted((step, path) for step, path in found if os.path.isfile(path))


def find_checkpoint(path) -> str:
    """A checkpoint file, or the latest step-*.safetensors in a directory. Anything
    else (FIFO, device) is refused without opening it, since reading one may block."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such checkpoint file or directory") from None
    if stat.S_ISDIR(mode):
        found = checkpoints(path)
        if not found:
            raise FileNotFoundError(f"{path}: no checkpoint (step-*.safetensors) in this directory")
        return found[-1][1]
    if not stat.S_ISREG(mode):
        raise ValueError(
            f"{path}: not a regular file (a FIFO, socket or device), so not a checkpoint"
        )
    return path


def stored_run(ckpt, path) -> dict:
    """The `train` settings stored in a loaded checkpoint, checked against its model."""
    extra = ckpt.extra
    run = extra.get("run") if isinstance(extra, dict) else None
    if not isinstance(run, dict) or set(run) != set(RUN_DEFAULTS):
        raise ValueError(
            f"{path}: holds no valid `python -m ferroformer train` settings "
            "(was it written by something else?)"
        )
    try:
        check_run(run)
    except ValueError as e:
        raise ValueError(f"{path}: its stored `train` settings are invalid: {e}") from None
    cls, kw = model_spec(run)
    model = ckpt.model
    if type(model) is not cls or any(model.config.get(k) != v for k, v in kw.items()):
        raise ValueError(
            f"{path}: its model ({type(model).__name__}) does not match the `train` "
            f"settings stored with it (--model {run['model']} --task {run['task']}); "
            "was it written by something else?"
        )
    return run


def stored_schedule(extra, path):
    from ..train import LRSchedule

    keys = {"base_lr", "warmup_steps", "total_steps", "decay", "min_lr"}
    config = extra.get("schedule")
    if not isinstance(config, dict) or set(config) != keys:
        raise ValueError(f"{path}: holds no valid learning-rate schedule")
    try:
        return LRSchedule(**config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: its learning-rate schedule is invalid: {e}") from None


def check_output(flag, path) -> None:
    """An output file's folder exists and the path is not a directory: fail before the work."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{flag} {path}: the directory {folder} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{flag} {path}: is a directory; give a file name")
    if os.path.exists(path) and not os.path.isfile(path):
        raise ValueError(f"{flag} {path}: not a regular file (a device or FIFO); give a file name")


def check_writable(directory) -> None:
    """Creates the checkpoint directory and writes a scratch file there, so that an
    unwritable one fails now rather than at the first save."""
    os.makedirs(directory, exist_ok=True)
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise OSError(
            f"--checkpoint-dir {directory}: cannot write there ({e.strerror or e})"
        ) from None


def run_trainer_class():
    from ..train import Trainer

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
            for _, old in checkpoints(directory)[:-KEEP_CHECKPOINTS]:
                os.unlink(old)

    return RunTrainer


def encode_prompt(run, text):
    """The task's tokens for a prompt: bytes as UTF-8; addition "a+b"; copy/reverse digits."""
    from ..data import AdditionTask
    from ..data.tasks import N_SPECIAL

    if run["task"] == "bytes":
        ids = list(text.encode("utf-8"))
        if not ids:
            raise ValueError("--prompt is empty")
        return ids
    if run["task"] == "addition":
        m = re.fullmatch(r"\s*(\d+)\s*\+\s*(\d+)\s*", text)
        n = run["digits"]
        if not m or max(len(m.group(1)), len(m.group(2))) > n:
            raise ValueError(
                f"--prompt must be a sum like '12+34' of numbers with at most {n} "
                f"digits (the checkpoint learned {n}-digit addition), got {text!r}"
            )
        return AdditionTask(n_digits=n).encode(int(m.group(1)), int(m.group(2)))[0]
    chars = [c for c in text if not c.isspace()]
    bad = sorted({c for c in chars if c not in SYMBOLS})
    if bad or not 1 <= len(chars) <= run["length"]:
        raise ValueError(
            f"--prompt must be 1 to {run['length']} of the symbols {SYMBOLS} for the "
            f"{run['task']} task, got {text!r}"
        )
    return [N_SPECIAL + SYMBOLS.index(c) for c in chars]


def decode_answer(run, prompt, ids):
    from ..data.tasks import N_SPECIAL

    if run["task"] == "bytes":
        return prompt + bytes(int(t) for t in ids).decode("utf-8", errors="replace")
    text = "".join(
        SYMBOLS[t - N_SPECIAL] if 0 <= t - N_SPECIAL < len(SYMBOLS) else "?" for t in ids
    )
    if run["task"] == "addition":
        a, b = re.fullmatch(r"\s*(\d+)\s*\+\s*(\d+)\s*", prompt).groups()
        text = text[::-1]  # the task writes sums least significant digit first
        if "?" not in text:
            text = text.lstrip("0") or "0"
        return f"{int(a)} + {int(b)} = {text}"
    return text


def token_label(run, t: int) -> str:
    from ..data.tasks import BOS, EOS, N_SPECIAL, PAD, SEP

    if run["task"] == "bytes":
        return repr(chr(t))[1:-1] if t < 128 else f"x{t:02x}"
    special = {PAD: "_", BOS: "<s>", EOS: "</s>", SEP: "="}
    if t in special:
        return special[t]
    return SYMBOLS[t - N_SPECIAL] if t - N_SPECIAL < len(SYMBOLS) else "+"
