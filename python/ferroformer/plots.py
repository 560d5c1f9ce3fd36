"""PNG plots of training and of what a model learned; matplotlib is an optional
extra (``pip install "ferroformer[plot]"``).

    plot_loss(trainer.history, "loss.png", evals=trainer.evals)   # or plot_loss(trainer, ...)
    plot_attention(w, "attn.png", tokens_q=list("abc"), tokens_k=list("abc"))  # (Tq, Tk) or (H, Tq, Tk)
    plot_positional_encoding(gpt, "wpe.png")      # or a (T, C) table: sinusoidal, learned, RoPE cos

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no display,
no change to the process's matplotlib backend) and written atomically: the
image is rendered in memory, then a temporary file beside ``path`` is renamed
over it. The format follows the suffix (png, svg or pdf; PNG otherwise).
"""

from __future__ import annotations

import io
import os
from typing import Optional, Sequence

import numpy as np

from .backends import to_host
from .checkpoint import atomic_write

INSTALL_HINT = 'plotting needs matplotlib: pip install "ferroformer[plot]"'


def _figure(figsize):
    """A matplotlib Figure on the Agg canvas; one clear ImportError without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    fig = Figure(figsize=figsize, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> str:
    path = os.fspath(path)
    fmt = os.path.splitext(path)[1].lower().lstrip(".")
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt if fmt in ("png", "svg", "pdf") else "png", bbox_inches="tight")
    atomic_write(path, buf.getvalue())
    return path


# -- training ----------------------------------------------------------------------------
def plot_loss(history, path, evals=None, *, title: str = "training loss") -> str:
    """Loss against step from ``history`` [(step, loss)] (a Trainer's ``history``, or the
    Trainer itself, whose ``evals`` are then used too), with a moving average once
    there are more than 20 points; ``evals`` [(step, {name: number})] go on a second
    axis, one line per name. The loss axis is logarithmic when every loss is positive.
    Returns ``path``."""
    if hasattr(history, "history"):
        evals = history.evals if evals is None else evals
        history = history.history
    pts = np.asarray([(s, v) for s, v in history], dtype=np.float64).reshape(-1, 2)
    if len(pts) == 0:
        raise ValueError("plot_loss: the history is empty (train at least one step)")
    steps, loss = pts[:, 0], pts[:, 1]
    fig = _figure((7, 4))
    ax = fig.add_subplot()
    ax.plot(steps, loss, color="tab:blue", alpha=0.35 if len(pts) > 20 else 1.0, lw=1, label="loss")
    if len(pts) > 20:
        w = max(2, len(pts) // 20)
        smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
        ax.plot(steps[w - 1 :], smooth, color="tab:blue", lw=2, label=f"loss ({w}-step mean)")
    if np.isfinite(loss).all() and (loss > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    metrics = {}
    for step, result in evals or []:
        for name, value in (result or {}).items():
            if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
                metrics.setdefault(name, []).append((step, float(value)))
    if metrics:
        ax2 = ax.twinx()
        colors = ["tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
        for i, (name, vals) in enumerate(sorted(metrics.items())):
            s, v = zip(*vals)
            ax2.plot(s, v, "o-", color=colors[i % len(colors)], ms=4, label=name)
        ax2.set_ylabel("evaluation")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="upper right", fontsize="small")
    return _save(fig, path)


# -- attention -----------------------------------------------------------------------------
def _check_labels(name, labels, n):
    if labels is not None and len(labels) != n:
        raise ValueError(f"plot_attention: {name} has {len(labels)} labels for {n} positions")


def plot_attention(
    weights,
    path,
    tokens_q: Optional[Sequence] = None,
    tokens_k: Optional[Sequence] = None,
    *,
    title: str = "attention",
) -> str:
    """Heat map of attention probabilities (Tq, Tk), or one panel per head for
    (H, Tq, Tk) (e.g. ``attention_weights(...)[0]``); rows are queries, columns keys,
    labelled with ``tokens_q`` / ``tokens_k`` when given. Returns ``path``."""
    w = np.asarray(to_host(weights), dtype=np.float64)
    if w.ndim == 2:
        w = w[None]
    if w.ndim != 3 or 0 in w.shape:
        raise ValueError(
            f"plot_attention: weights must be (Tq, Tk) or (H, Tq, Tk), got shape "
            f"{np.shape(weights)} (pick one batch row of a (B, H, Tq, Tk) array)"
        )
    h, tq, tk = w.shape
    _check_labels("tokens_q", tokens_q, tq)
    _check_labels("tokens_k", tokens_k, tk)
    cols = min(h, 4)
    rows = -(-h // cols)
    cell = max(2.5, min(6.0, 0.3 * max(tq, tk)))
    fig = _figure((cell * cols + 1.0, cell * rows + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False)
    vmax = max(float(w.max()), 1e-12)
    for i, ax in enumerate(axes.flat):
        if i >= h:
            ax.set_axis_off()
            continue
        im = ax.imshow(
            w[i], cmap="viridis", vmin=0.0, vmax=vmax, aspect="auto", interpolation="nearest"
        )
        ax.set_title(f"head {i}" if h > 1 else title, fontsize="small")
        if tokens_k is not None:
            ax.set_xticks(range(tk), [str(t) for t in tokens_k], rotation=90, fontsize="x-small")
        if tokens_q is not None:
            ax.set_yticks(range(tq), [str(t) for t in tokens_q], fontsize="x-small")
        ax.set_xlabel("key")
        if i % cols == 0:
            ax.set_ylabel("query")
    if h > 1:
        fig.suptitle(title)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="probability")
    return _save(fig, path)


# -- positions -----------------------------------------------------------------------------
def positional_table(source) -> np.ndarray:
    """The (T, C) position table of a model or module, or an array passed through:
    GPT ``wpe``, BERT ``pos_emb`` (learned), Transformer ``pe`` (sinusoidal), Llama
    ``rope`` (the RoPE cos table, (T, head_dim/2))."""
    for attr in ("wpe", "pos_emb", "pe", "rope"):
        if hasattr(source, attr) and getattr(source, attr) is not None:
            source = getattr(source, attr)
            break
    if hasattr(source, "cos") and hasattr(source, "sin"):
        table = source.cos
    elif hasattr(source, "table"):
        table = source.table
    elif hasattr(source, "weight"):
        table = source.weight.data
    else:
        table = source
    t = np.asarray(to_host(table), dtype=np.float64)
    if t.ndim != 2:
        raise ValueError(
            f"plot_positional_encoding: expected a model with positions or a "
            f"(T, C) table, got {type(source).__name__} of shape {t.shape}"
        )
    return t


def plot_positional_encoding(
    source, path, *, max_positions: Optional[int] = None, title: Optional[str] = None
) -> str:
    """Heat map of a position table (positions down, dimensions across): a (T, C)
    array (e.g. ``nn.positional.sinusoidal_table``), a positional module, or a model
    (see ``positional_table``). ``max_positions`` keeps the first rows. Returns ``path``."""
    t = positional_table(source)
    if max_positions is not None:
        t = t[:max_positions]
    if title is None:
        title = {
            "GPT": "learned positions (wpe)",
            "BERT": "learned positions (pos_emb)",
            "Transformer": "sinusoidal positions",
            "Llama": "RoPE cos table",
        }.get(type(source).__name__, "positional encoding")
    lim = max(float(np.abs(t).max()), 1e-12)
    fig = _figure((7, 4.5))
    ax = fig.add_subplot()
    im = ax.imshow(t, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
    ax.set_xlabel("dimension")
    ax.set_ylabel("position")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, shrink=0.85)
    return _save(fig, path)
