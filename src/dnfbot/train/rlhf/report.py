"""`dnfbot report rlhf --run DIR`: what RLHF changed — the same held-out prompts answered before and after, side by
side, because a mean reward alone hides what the policy learnt to do.

Reads a run directory written by `dnfbot train ppo` (any --algo):
    config.json, summary.json      settings and the final summary
    eval_before.jsonl / eval_after.jsonl   held-out prompts with the response and reward before and after training
    metrics.jsonl                  one record per training step
and writes
    report.md                      sample table Query / Response (before) / Response (after) / Reward (before) /
                                   Reward (after), mean reward before vs after with mean KL, the plots below
    reward.png, kl.png, response_length.png, eos_rate.png, shaped_score.png   curves over training steps
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dnfbot.errors import InputError
from dnfbot.io import atomic_write_text, read_json, read_jsonl

PLOTS = {
    "reward": ("reward", "mean reward-model score of the rollout batch"),
    "kl": ("kl", "KL(policy || reference), nats per response"),
    "response_length": ("response_length", "response length (tokens)"),
    "eos_rate": ("eos_rate", "share of rollout responses ending with EOS"),
    # what PPO maximises besides the KL term: normalised score minus the no-EOS penalty
    "shaped_score": ("score_normalized", "normalised score - no-EOS penalty (PPO's objective, without KL)"),
}


def load_run(run_dir: str | Path) -> dict[str, Any]:
    run = Path(run_dir)
    if not run.is_dir():
        raise InputError(f"{run}: run directory not found")
    before_path, after_path = run / "eval_before.jsonl", run / "eval_after.jsonl"
    for p in (before_path, after_path):
        if not p.exists():
            raise InputError(f"{p}: missing — is {run} a finished `dnfbot train ppo` run?")
    from dnfbot.train.common import read_metrics

    metrics_path = run / "metrics.jsonl"
    return {
        "config": read_json(run / "config.json") if (run / "config.json").exists() else {},
        "summary": read_json(run / "summary.json") if (run / "summary.json").exists() else {},
        "before": read_jsonl(before_path),
        "after": read_jsonl(after_path),
        "metrics": read_metrics(metrics_path) if metrics_path.exists() else [],
    }


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _cell(text: str, limit: int = 160) -> str:
    """One Markdown table cell: no pipes or newlines, long text shortened."""
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|") or "(empty)"


def _fmt(x: float | None, spec: str = "+.3f") -> str:
    return "n/a" if x is None else format(x, spec)


def held_out_pairs(run: Path, data: dict[str, Any]) -> list[tuple[dict, dict]]:
    """(before, after) records of the same held-out prompt and sample (eval_samples > 1 repeats a prompt)."""
    before = {(r["prompt"], r.get("sample", 0)): r for r in data["before"]}
    pairs = [(before[key], r) for r in data["after"] if (key := (r["prompt"], r.get("sample", 0))) in before]
    if not pairs:
        raise InputError(f"{run}: eval_before.jsonl and eval_after.jsonl share no prompt")
    return pairs


def plot_curves(metrics: list[dict], out_dir: Path) -> list[Path]:
    """One PNG per curve (reward, KL, response length, …) against the training step."""
    return _plot({None: metrics}, list(PLOTS), out_dir, prefix="")


def _plot(series: dict[str | None, list[dict]], names: list[str], out_dir: Path, prefix: str) -> list[Path]:
    """One PNG per name in PLOTS with a line per run of `series` (label None: a single run, no legend); a name
    no run logged is skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name in names:
        key, label = PLOTS[name]
        lines = {
            run: [(m["step"], m[key]) for m in metrics if isinstance(m.get(key), int | float)]
            for run, metrics in series.items()
        }
        if not any(lines.values()):
            continue
        fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
        for run, points in lines.items():
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, linewidth=1.5, label=run)
        ax.set_xlabel("step")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
        ax.set_title(label, fontsize=9)
        if None not in series:
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{prefix}{name}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def build_report(run_dir: str | Path, out: str | Path | None = None, samples: int = 8) -> dict[str, Any]:
    """Write report.md (+ PNGs) for a run; returns the numbers it reports."""
    run = Path(run_dir)
    data = load_run(run)
    pairs = held_out_pairs(run, data)
    report_path = Path(out) if out else run / "report.md"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    plots = plot_curves(data["metrics"], report_path.parent)

    cfg, summary = data["config"], data["summary"]
    r_before = _mean([b["reward"] for b, _ in pairs])
    r_after = _mean([a["reward"] for _, a in pairs])
    kl_after = _mean([a["kl"] for _, a in pairs])
    len_before = _mean([b["length"] for b, _ in pairs])
    len_after = _mean([a["length"] for _, a in pairs])
    wins = sum(a["reward"] > b["reward"] for b, a in pairs)
    algo = cfg.get("algo", summary.get("algo", "ppo"))

    lines = [
        f"# RLHF report — {algo.upper()}",
        "",
        f"Run: `{run}`  ",
        f"Policy: `{cfg.get('model')}` + SFT adapter `{cfg.get('sft_adapter')}`; "
        f"reward model: adapter `{cfg.get('reward_adapter')}`"
        + (f" on `{cfg['reward_model']}`" if cfg.get("reward_model") else " on the same base")
        + "  ",
        f"Steps: {summary.get('steps', len(data['metrics']))}; held-out prompts: "
        f"{len({b['prompt'] for b, _ in pairs})} ({len(pairs)} responses).",
        "",
        "## Held-out prompts: before vs after",
        "",
        "| | before | after |",
        "|---|---|---|",
        f"| mean reward | {_fmt(r_before)} | {_fmt(r_after)} |",
        f"| mean KL to the reference (nats/response) | 0 | {_fmt(kl_after, '.3f')} |",
        f"| mean response length (tokens) | {_fmt(len_before, '.1f')} | {_fmt(len_after, '.1f')} |",
        f"| responses ending with EOS | {_share([b['has_eos'] for b, _ in pairs])} "
        f"| {_share([a['has_eos'] for _, a in pairs])} |",
        "",
        f"Reward higher after training on {wins} of {len(pairs)} responses "
        f"(change {_fmt(None if r_after is None or r_before is None else r_after - r_before)}).",
        f"Reference frozen (its log-probs of the 'before' responses unchanged): "
        f"{summary.get('reference_frozen', 'n/a')}; reference shares the base weights: "
        f"{summary.get('reference_shares_base', 'n/a')}.",
        "",
        "## Samples",
        "",
        "| # | Query | Response (before) | Response (after) | Reward (before) | Reward (after) |",
        "|---|---|---|---|---|---|",
    ]
    first = [(b, a) for b, a in pairs if a.get("sample", 0) == 0]  # one response per prompt in the table
    for i, (b, a) in enumerate(first[:samples], 1):
        lines.append(
            f"| {i} | {_cell(b['prompt'], 120)} | {_cell(b['response'])} | {_cell(a['response'])} "
            f"| {b['reward']:+.3f} | {a['reward']:+.3f} |"
        )
    if plots:
        lines += ["", "## Training curves", ""]
        lines += [f"![{p.stem}]({p.name})" for p in plots]
    if data["metrics"]:
        last = data["metrics"][-1]
        keys = [
            k
            for k in (
                "reward",
                "kl",
                "kl_coef",
                "policy_loss",
                "value_loss",
                "clipfrac",
                "entropy",
                "response_length",
                "tokens_per_s",
            )
            if k in last
        ]
        lines += ["", f"Last step ({last['step']}): " + ", ".join(f"{k} {last[k]:.4g}" for k in keys) + "."]
    lines += ["", f"Regenerate: `dnfbot report rlhf --run {run}`", ""]
    atomic_write_text(report_path, "\n".join(lines))
    return {
        "report": str(report_path),
        "plots": [str(p) for p in plots],
        "algo": algo,
        "n_prompts": len(pairs),
        "reward_before": r_before,
        "reward_after": r_after,
        "mean_kl": kl_after,
        "response_length_before": len_before,
        "response_length_after": len_after,
        "improved_prompts": wins,
    }


def _share(flags: list[bool]) -> str:
    return f"{sum(flags)}/{len(flags)}"


def compare_runs(runs: list[str | Path], out_dir: str | Path) -> dict[str, Any]:
    """Several RLHF runs on the same prompts side by side (e.g. `--algo ppo` vs `rloo`): compare.md with one row per
    run (held-out reward before → after, the gain in starting-reward standard deviations, KL, length, EOS rate,
    optimizer updates, time) and the reward / KL curves of all runs overlaid in compare_*.png."""
    import statistics

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, series = [], {}
    for run in runs:
        data = load_run(run)
        pairs = held_out_pairs(Path(run), data)
        before = [b["reward"] for b, _ in pairs]
        after = [a["reward"] for _, a in pairs]
        std = statistics.pstdev(before) or 1.0
        label = f"{data['config'].get('algo', 'ppo')} ({Path(run).name})"
        row = {
            "run": str(run),
            "label": label,
            "reward_before": statistics.mean(before),
            "reward_after": statistics.mean(after),
            "gain_std": (statistics.mean(after) - statistics.mean(before)) / std,
            "improved": sum(a > b for a, b in zip(after, before, strict=True)),
            "n_prompts": len(after),
            "mean_kl": statistics.mean(a["kl"] for _, a in pairs),
            "length_after": statistics.mean(a["length"] for _, a in pairs),
            "eos_rate_after": statistics.mean(bool(a["has_eos"]) for _, a in pairs),
            "optimizer_updates": int(sum(m.get("optimizer_updates", 0) for m in data["metrics"])) or None,
            "elapsed_s": data["summary"].get("elapsed_s"),
        }
        rows.append(row)
        series[label] = data["metrics"]
    plots = _plot(series, ["reward", "kl"], out, prefix="compare_")
    lines = [
        "# RLHF runs compared",
        "",
        "| run | held-out reward before → after | gain (start std) | improved | mean KL | length | EOS | updates | time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['reward_before']:+.3f} → {r['reward_after']:+.3f} | {r['gain_std']:+.2f} "
            f"| {r['improved']}/{r['n_prompts']} | {r['mean_kl']:.2f} | {r['length_after']:.1f} "
            f"| {r['eos_rate_after']:.2f} | {r['optimizer_updates'] or 'n/a'} | {r['elapsed_s'] or 'n/a'} |"
        )
    lines += ["", *[f"![{p.stem}]({p.name})" for p in plots], ""]
    atomic_write_text(out / "compare.md", "\n".join(lines))
    return {"report": str(out / "compare.md"), "plots": [str(p) for p in plots], "runs": rows}
