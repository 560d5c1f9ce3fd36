"""Training under careless input: every hyper-parameter is checked when it is set,
a non-finite loss or gradient stops the run at the step it happens (the weights
stay those of the last good step and the last checkpoint on disk is a good one),
and batches that cannot train are refused with the reason."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ferroformer.checkpoint import load_checkpoint
from ferroformer.data import AdditionTask, ByteLMDataset, CopyTask
from ferroformer.models import GPT
from ferroformer.train import (
    SGD,
    AdamW,
    CrossEntropyLoss,
    LRSchedule,
    NonFiniteError,
    Trainer,
    clip_grad_norm,
    grad_norm,
)
from ferroformer.train.checks import integer, real

NAN, INF = float("nan"), float("inf")


def tiny_gpt(backend="numpy"):
    return GPT(16, max_seq_len=8, d_model=8, n_heads=2, n_layers=1, backend=backend, rng=0)


def batches(seq=7, batch=4):
    def fn(rng):
        ids = rng.integers(0, 16, (batch, seq + 1))
        return {"input_ids": ids[:, :-1], "targets": ids[:, 1:]}

    return fn


def weights(model):
    return {n: np.array(p.data, copy=True) for n, p in model.named_parameters()}


# -- the shared checks ------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, error",
    [
        (NAN, ValueError),
        (INF, ValueError),
        (-INF, ValueError),
        (-0.1, ValueError),
        ("0.1", TypeError),
        (True, TypeError),
        (None, TypeError),
        ([0.1], TypeError),
    ],
)
def test_real_refuses(value, error):
    with pytest.raises(error, match=r"AdamW: lr must be"):
        real("AdamW", "lr", value, low=0)


def test_real_bounds_and_types():
    assert real("X", "p", np.float32(0.5), low=0, high=1) == 0.5
    assert real("X", "p", 3, low=0) == 3.0 and isinstance(real("X", "p", 3), float)
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        real("X", "p", 1.0, low=0, high=1, high_open=True)
    with pytest.raises(ValueError, match="> 0"):
        real("X", "p", 0.0, low=0, low_open=True)


@pytest.mark.parametrize(
    "value, error",
    [
        (0, ValueError),
        (-3, ValueError),
        (1.0, TypeError),
        (True, TypeError),
        ("2", TypeError),
        (None, TypeError),
    ],
)
def test_integer_refuses(value, error):
    with pytest.raises(error, match="Trainer: accum_steps must be"):
        integer("Trainer", "accum_steps", value, low=1)


def test_integer_takes_numpy_ints():
    assert integer("X", "n", np.int64(7), low=1) == 7


# -- optimizers, schedules, loss ----------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, says",
    [
        (dict(lr=NAN), "lr"),
        (dict(lr=-1e-3), "lr"),
        (dict(lr=INF), "lr"),
        (dict(betas=(1.0, 0.999)), r"betas\[0\]"),
        (dict(betas=(0.9, -0.1)), r"betas\[1\]"),
        (dict(betas=(0.9,)), "betas must be a pair"),
        (dict(betas="ab"), "betas must be a pair"),
        (dict(eps=0.0), "eps"),
        (dict(eps=NAN), "eps"),
        (dict(weight_decay=-0.1), "weight_decay"),
    ],
)
def test_adamw_refuses_bad_hyper_parameters(kwargs, says):
    with pytest.raises(ValueError, match=f"AdamW: {says}"):
        AdamW(tiny_gpt(), **kwargs)


def test_lr_is_checked_on_every_assignment():
    opt = AdamW(tiny_gpt())
    opt.lr = 0.5
    assert opt.lr == 0.5
    for bad in (NAN, -1.0):
        with pytest.raises(ValueError, match="AdamW: lr"):
            opt.lr = bad
    assert opt.lr == 0.5


def test_sgd_refuses():
    m = tiny_gpt()
    with pytest.raises(ValueError, match="nesterov needs a momentum"):
        SGD(m, lr=0.1, nesterov=True)
    with pytest.raises(TypeError, match="nesterov must be a bool"):
        SGD(m, lr=0.1, momentum=0.9, nesterov="yes")
    with pytest.raises(ValueError, match="momentum"):
        SGD(m, lr=0.1, momentum=1.0)


@pytest.mark.parametrize(
    "kwargs, says",
    [
        (dict(base_lr=NAN, warmup_steps=0, total_steps=10), "base_lr"),
        (dict(base_lr=1e-3, warmup_steps=0, total_steps=10, min_lr=1e-2), "min_lr"),
        (dict(base_lr=1e-3, warmup_steps=-1, total_steps=10), "warmup_steps"),
        (dict(base_lr=1e-3, warmup_steps=20, total_steps=10), "beyond"),
        (dict(base_lr=1e-3, warmup_steps=0, total_steps=0), "total_steps"),
        (dict(base_lr=1e-3, warmup_steps=0, total_steps=10, decay="exp"), "decay"),
    ],
)
def test_schedule_refuses(kwargs, says):
    with pytest.raises(ValueError, match=f"LRSchedule: .*{says}"):
        LRSchedule(**kwargs)


def test_loss_refuses():
    with pytest.raises(ValueError, match="label_smoothing"):
        CrossEntropyLoss(label_smoothing=1.0)
    with pytest.raises(TypeError, match="ignore_index"):
        CrossEntropyLoss(ignore_index=1.5)


def test_clip_grad_norm_refuses_and_leaves_non_finite_gradients():
    m = tiny_gpt()
    for p in m.parameters():
        p.grad = np.ones_like(p.data)
    with pytest.raises(ValueError, match="clip_grad_norm: max_norm"):
        clip_grad_norm(m.parameters(), 0.0)
    first = next(iter(m.parameters()))
    first.grad[0] = np.inf
    assert clip_grad_norm(m.parameters(), 1.0) == INF
    assert np.isinf(first.grad).any() and first.grad.reshape(-1)[-1] == 1.0


def test_grad_norm_does_not_overflow_in_float32():
    m = tiny_gpt()
    for p in m.parameters():
        p.grad = np.full_like(p.data, 1e20, dtype=np.float32)
    n = sum(p.data.size for p in m.parameters())
    got = grad_norm(m.parameters())
    assert math.isfinite(got) and math.isclose(got, 1e20 * math.sqrt(n), rel_tol=1e-5)


# -- the trainer --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, error, says",
    [
        (dict(accum_steps=0), ValueError, "accum_steps"),
        (dict(grad_clip=0.0), ValueError, "grad_clip"),
        (dict(grad_clip=NAN), ValueError, "grad_clip"),
        (dict(eval_every=-1), ValueError, "eval_every"),
        (dict(checkpoint_every=1.5), TypeError, "checkpoint_every"),
        (dict(eval_fn=3), TypeError, "eval_fn"),
    ],
)
def test_trainer_refuses_bad_settings(kwargs, error, says):
    m = tiny_gpt()
    with pytest.raises(error, match=f"Trainer: {says}"):
        Trainer(m, AdamW(m), batches(), progress=False, **kwargs)


def test_trainer_refuses_a_batch_fn_that_is_not_callable():
    m = tiny_gpt()
    with pytest.raises(TypeError, match="batch_fn must be callable"):
        Trainer(m, AdamW(m), [1, 2], progress=False)


def test_fit_refuses_bad_step_counts():
    m = tiny_gpt()
    tr = Trainer(
        m, AdamW(m), batches(), progress=False, schedule=LRSchedule(1e-3, 50, 100, "cosine")
    )
    with pytest.raises(ValueError, match="max_steps"):
        tr.fit(0)
    with pytest.raises(ValueError, match="warmup_steps 50 is beyond"):
        tr.fit(10)
    assert tr.step == 0


@pytest.mark.parametrize(
    "make, says",
    [
        (
            lambda rng: {
                "input_ids": np.zeros((0, 7), np.int64),
                "targets": np.zeros((0, 7), np.int64),
            },
            "empty",
        ),
        (
            lambda rng: {
                "input_ids": np.zeros((2, 9), np.int64),
                "targets": np.zeros((2, 9), np.int64),
            },
            "longer than the model's max_seq_len 8",
        ),
        (lambda rng: {"input_ids": np.zeros((2, 7), np.int64)}, "targets"),
    ],
)
def test_trainer_refuses_bad_batches(make, says):
    m = tiny_gpt()
    before = weights(m)
    with pytest.raises(ValueError, match=says):
        Trainer(m, AdamW(m), make, progress=False).fit(1)
    assert all(np.array_equal(before[n], p.data) for n, p in m.named_parameters())


class NaNAtStep(CrossEntropyLoss):
    """Cross-entropy that returns NaN from the ``bad``-th call on."""

    def __init__(self, bad):
        super().__init__()
        self.calls, self.bad = 0, bad

    def __call__(self, logits, targets):
        self.calls += 1
        loss = super().__call__(logits, targets)
        return NAN if self.calls >= self.bad else loss


@pytest.mark.parametrize("backend", ["numpy", "rust"])
def test_non_finite_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(tmp_path, backend):
    from ferroformer.backends import available_backends

    if backend not in available_backends():
        pytest.skip(f"{backend} backend not built")
    m = tiny_gpt(backend)
    path = tmp_path / "last.safetensors"
    tr = Trainer(
        m,
        AdamW(m, lr=1e-2),
        batches(),
        loss=NaNAtStep(3),
        seed=0,
        progress=False,
        checkpoint_path=path,
        checkpoint_every=1,
    )
    tr.fit(2)
    good = weights(m)
    with pytest.raises(NonFiniteError, match="stopped at step 3: the loss is not finite") as e:
        tr.fit(5)
    assert e.value.step == 3 and e.value.what == "loss" and tr.step == 2
    assert all(np.array_equal(good[n], np.asarray(p.data)) for n, p in m.named_parameters())
    assert all(p.grad is None for p in m.parameters())
    saved = load_checkpoint(path, backend="numpy")
    assert saved.step == 2
    for n, p in saved.model.named_parameters():
        assert np.array_equal(p.data, good[n])


def test_non_finite_gradient_stops_before_the_update():
    m = tiny_gpt()
    original = m.backward

    def backward(grad):
        out = original(grad)
        next(iter(m.parameters())).grad.reshape(-1)[0] = np.inf
        return out

    m.backward = backward
    before = weights(m)
    tr = Trainer(m, AdamW(m), batches(), grad_clip=1.0, progress=False)
    with pytest.raises(NonFiniteError, match="step 1: the gradient is not finite") as e:
        tr.fit(1)
    assert e.value.what == "gradient" and tr.step == 0 and tr.optimizer.step_count == 0
    assert all(np.array_equal(before[n], p.data) for n, p in m.named_parameters())


def test_save_refuses_non_finite_weights_and_writes_nothing(tmp_path):
    m = tiny_gpt()
    tr = Trainer(m, AdamW(m), batches(), progress=False)
    next(iter(m.parameters())).data.reshape(-1)[3] = np.nan
    path = tmp_path / "x.safetensors"
    with pytest.raises(NonFiniteError, match="weights"):
        tr.save(path)
    assert list(tmp_path.iterdir()) == []


# -- the built-in data ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, error, says",
    [
        (lambda: CopyTask(0), ValueError, "n_symbols"),
        (lambda: CopyTask(4, 5, 3), ValueError, "min_len <= max_len"),
        (lambda: CopyTask(4, 1.0, 3), TypeError, "min_len"),
        (lambda: AdditionTask(10), ValueError, "n_digits"),
        (lambda: AdditionTask(3, holdout=0.0), ValueError, "holdout"),
        (lambda: AdditionTask(3, holdout=1.0), ValueError, "holdout"),
        (lambda: CopyTask(4).lm_batch_fn(0), ValueError, "batch_size"),
        (lambda: CopyTask(4).evaluate_lm(None, []), ValueError, "at least one example"),
    ],
)
def test_tasks_refuse(make, error, says):
    with pytest.raises(error, match=says):
        make()


def test_byte_dataset_refuses(tmp_path):
    src = tmp_path / "a.py"
    src.write_bytes(b"x = 1\n" * 200)
    with pytest.raises(ValueError, match="val_fraction"):
        ByteLMDataset([src], val_fraction=1.0)
    with pytest.raises(ValueError, match="max_bytes"):
        ByteLMDataset([src], max_bytes=0)
    data = ByteLMDataset([src])
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="split must be"):
        data.batch(2, 8, rng, split="test")
    with pytest.raises(ValueError, match="shorter than seq_len"):
        data.batch(2, 10_000, rng)
    with pytest.raises(ValueError, match="seq_len"):
        data.batch_fn(2, 0)


def test_atomic_write_never_replaces_a_device_or_fifo(tmp_path):
    """Writing a checkpoint or plot 'to /dev/null' must not turn /dev/null into a file."""
    import os
    import stat

    from ferroformer.checkpoint import atomic_write, save_checkpoint

    fifo = tmp_path / "ckpt.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        atomic_write(fifo, b"x")
    with pytest.raises(ValueError, match="not a regular file"):
        save_checkpoint(fifo, tiny_gpt())
    with pytest.raises(ValueError, match="not a regular file"):
        atomic_write(tmp_path, b"x")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and sorted(os.listdir(tmp_path)) == [fifo.name]
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
