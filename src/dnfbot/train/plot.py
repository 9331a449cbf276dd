"""`dnfbot plot metrics RUN_DIR`: training curves of a run's metrics.jsonl to one PNG."""

from __future__ import annotations

import os
from pathlib import Path

from dnfbot.errors import InputError
from dnfbot.train.common import read_metrics

# panels in this order when present: (title, keys)
_PANELS = [
    ("loss", ("loss", "eval_loss")),
    ("pairwise accuracy", ("accuracy", "eval_accuracy", "reward_accuracy")),
    ("reward / margin", ("margin", "eval_margin", "reward_margin", "mean_reward", "reward")),
    ("learning rate", ("lr",)),
    ("tokens/s", ("tokens_per_s",)),
]


def plot_metrics(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> dict:
    """Draw every known series of RUN_DIR/metrics.jsonl against the step; returns {"png", "series", "steps"}."""
    run = Path(run_dir)
    path = run / "metrics.jsonl" if run.is_dir() else run
    if not path.exists():
        raise InputError(f"{run_dir}: no metrics.jsonl (is this a training run directory?)")
    recs = read_metrics(path)
    panels = []
    for title, keys in _PANELS:
        series = {k: [(r["step"], r[k]) for r in recs if isinstance(r.get(k), int | float)] for k in keys}
        series = {k: v for k, v in series.items() if v}
        if series:
            panels.append((title, series))
    if not panels:
        raise InputError(f"{path}: no step metrics to plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.4 * len(panels)), sharex=True, squeeze=False)
    for ax, (title, series) in zip(axes[:, 0], panels, strict=True):
        for k, pts in series.items():
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker="o" if len(pts) < 20 else None, ms=3, label=k)
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(run.name if run.is_dir() else run.parent.name)
    fig.tight_layout()
    png = Path(out) if out else (path.parent / "metrics.png")
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return {
        "png": str(png),
        "series": [k for _, s in panels for k in s],
        "steps": len({r["step"] for r in recs}),
    }
