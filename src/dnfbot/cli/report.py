"""`dnfbot plot metrics` and `dnfbot report rlhf`: what a training run learnt, as PNG curves and Markdown."""

from __future__ import annotations

from pathlib import Path

import typer

from dnfbot.cli.options import JSON, show

plot = typer.Typer(no_args_is_help=True)
report = typer.Typer(no_args_is_help=True)


@plot.command("metrics")
def plot_metrics_cmd(
    run_dir: Path = typer.Argument(..., help="a run directory with metrics.jsonl"),
    out_file: Path = typer.Option(None, "--out", help="PNG path (default RUN_DIR/metrics.png)"),
    json_out: bool = JSON,
):
    """Loss (and eval / reward) curves of a training run to PNG."""
    from dnfbot.console import out
    from dnfbot.train.plot import plot_metrics

    show(plot_metrics(run_dir, out_file), json_out,
         lambda r: out.print(f"[green]plot[/]: {', '.join(r['series'])} → {r['png']}"))  # fmt: skip


@report.command("rlhf")
def report_rlhf(
    run: Path = typer.Option(..., "--run", help="run directory of `dnfbot train ppo` (or `train dpo`)"),
    output: Path = typer.Option(None, "--out", help="Markdown file (default: RUN/report.md)"),
    samples: int = typer.Option(8, "--samples", help="sample prompts in the table"),
    compare: list[Path] = typer.Option(
        None,
        "--compare",
        help="other runs on the same prompts (e.g. --algo rloo): compare.md + overlaid curves",
    ),
    json_out: bool = JSON,
):
    """Before/after table, mean reward and KL, PNG curves of reward, KL and response length (PPO/GRPO/RLOO); for a
    `train dpo` run, the held-out implicit reward margin before/after and its sample pairs."""
    from dnfbot.console import console, out
    from dnfbot.train.dpo import is_dpo_run
    from dnfbot.train.rlhf.report import build_report

    if is_dpo_run(run):
        from dnfbot.train.dpo import build_report

    def human(r: dict) -> None:
        out.print(Path(r["report"]).read_text(encoding="utf-8"), markup=False, highlight=False)
        console.print(f"written: {r['report']} ({len(r['plots'])} plots)")

    if compare:
        from dnfbot.train.rlhf.report import compare_runs

        show(compare_runs([run, *compare], output or run / "compare"), json_out, human)
        return
    show(build_report(run, output, samples=samples), json_out, human)
