"""`dnfbot eval retrieval | embedder`."""

from __future__ import annotations

from pathlib import Path

import typer

from dnfbot.cli.options import CONFIG, JSON, SearchFlags, show, with_options

eval = typer.Typer(no_args_is_help=True)  # the group's name (dnfbot.cli.GROUPS)


@eval.command("retrieval")
@with_options(SearchFlags)
def eval_retrieval(
    queries: Path = typer.Option(
        Path("eval/dev.jsonl"), "--queries", help="dev set JSONL (see eval/README.md)"
    ),
    k: int = typer.Option(5, "--k", min=1),
    calibrate: bool = typer.Option(False, "--calibrate", help="also search the refusal threshold"),
    json_out: bool = JSON,
    options: dict = None,
):
    """Recall@k, MRR@k, answer-hit rate and refusal accuracy on a dev set."""
    from dnfbot.console import out
    from dnfbot.eval.retrieval import evaluate, format_report, load_devset
    from dnfbot.rag import open_rag

    items = load_devset(queries)
    report = evaluate(open_rag(**options), items, k=k, calibrate=calibrate)
    show(report, json_out, lambda r: out.print(format_report(r)))


@eval.command("embedder")
def eval_embedder(
    pairs: Path = typer.Option(..., "--pairs", help="pairs JSONL (its valid split is held out)"),
    run: Path = typer.Option(None, "--run", help="a `train embedder --out` folder: base + every epoch"),
    models: list[str] = typer.Option(None, "--model", help="model folder(s) to compare instead; repeatable"),
    out_dir: Path = typer.Option(Path("runs/embedder-eval"), "--out", help="folder for the PNGs and JSON"),
    ks: str = typer.Option("1,5,10", "--k", help="Recall@k cut-offs, comma-separated"),
    max_seq_length: int = typer.Option(None, "--max-seq-length"),
    threads: int = typer.Option(0, "--threads", min=0, help="torch CPU threads (0 = torch's default)"),
    config: Path = CONFIG,
    json_out: bool = JSON,
):
    """Own-passage vs other-passage cosine per checkpoint (histograms) and Recall@k/MRR before vs after."""
    from dnfbot.config import load_settings
    from dnfbot.console import out
    from dnfbot.errors import InputError
    from dnfbot.eval.embedder import evaluate_embedders, format_report, run_models
    from dnfbot.train.common import set_threads

    set_threads(threads)
    s = load_settings(config)
    if run:
        checkpoints = run_models(run)
    elif models:
        checkpoints = [(Path(m).name or m, m) for m in models]
    else:
        raise InputError("give --run DIR (a training output) or --model PATH")
    try:
        cutoffs = tuple(int(x) for x in ks.split(",") if x.strip())
    except ValueError:
        raise InputError(f"--k {ks}: expected integers like 1,5,10") from None
    r = evaluate_embedders(
        checkpoints,
        pairs,
        out_dir,
        ks=cutoffs,
        query_prefix=s.dense.query_prefix,
        passage_prefix=s.dense.passage_prefix,
        max_seq_length=max_seq_length,
    )
    show(r, json_out, lambda r: out.print(format_report(r)))
