"""`dnfbot eval retrieval | answers | embedder`."""

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
    calibrate: bool = typer.Option(
        False,
        "--calibrate",
        help="also search the refusal threshold; in hybrid mode, first choose the fusion weights (2-fold) "
        "and store them with the index",
    ),
    json_out: bool = JSON,
    options: dict = None,
):
    """Recall@k, MRR@k, answer-hit rate and refusal accuracy on a dev set."""
    from dnfbot.console import out
    from dnfbot.eval.retrieval import evaluate, format_report, load_devset
    from dnfbot.rag import open_rag

    items = load_devset(queries)
    rag = open_rag(**options)
    fusion = None
    if calibrate and getattr(rag.retriever, "mode", None) == "hybrid":
        from dnfbot.retrieval.dense import calibrate_and_store

        # fusion first: the refusal threshold below is then calibrated on the retrieval that will be used
        rag.retriever, fusion = calibrate_and_store(
            rag.retriever, items, k, str(queries), rag.rerank, rag.reranker.fetch(k)
        )
    report = evaluate(rag, items, k=k, calibrate=calibrate)
    if fusion:
        report["fusion_calibration"] = fusion

    def _print(r: dict) -> None:
        out.print(format_report(r))
        if fusion:
            c, h = fusion["chosen"], fusion["held_out"]
            out.print(
                f"calibrated fusion: {c['fusion']} {c['sparse_weight']:.1f}/{c['dense_weight']:.1f} (stored with "
                f"the index); held out (2-fold) Recall@{k} {h['recall']:.3f}, MRR@{k} {h['mrr']:.3f}"
            )

    show(report, json_out, _print)


@eval.command("answers")
@with_options(SearchFlags)
def eval_answers(
    queries: list[Path] = typer.Option(
        None, "--queries", help="question sets (default: eval/players.jsonl and eval/dev.jsonl)"
    ),
    followups: str = typer.Option(
        "eval/followups.jsonl", "--followups", help="two-turn conversations ('' to skip)"
    ),
    split: str = typer.Option(
        "test", "--split", help="tune | test | all (items without a split always count)"
    ),
    calibrate: bool = typer.Option(
        False, "--calibrate", help="search min_coverage on the tune split (false refusals <= 5%)"
    ),
    json_out: bool = JSON,
    options: dict = None,
):
    """What a player reads: answer-hit, refusals and readability, per kind of question."""
    from dnfbot.console import emit_json, out
    from dnfbot.errors import InputError
    from dnfbot.eval.answers import (
        calibrate_answers,
        evaluate_answers,
        evaluate_followups,
        format_answers_report,
        load_followups,
    )
    from dnfbot.eval.retrieval import load_devset
    from dnfbot.rag import open_rag

    if split not in ("tune", "test", "all"):
        raise InputError(f"--split: expected tune, test or all, not '{split}'")
    sets = queries or [Path("eval/players.jsonl"), Path("eval/dev.jsonl")]
    rag = open_rag(**options)
    which = None if split == "all" else split
    reports = {}
    for path in sets:
        items = load_devset(path)
        reports[path.name] = evaluate_answers(rag, items, which)
        if calibrate:
            reports[path.name]["calibration"] = calibrate_answers(rag, items)
    if followups:
        reports[Path(followups).name] = evaluate_followups(rag, load_followups(followups), which)
    if json_out:
        emit_json({"split": split, "min_coverage": rag.settings.answer.min_coverage, "sets": reports})
        return
    for name, r in reports.items():
        out.print(format_answers_report(f"{name} ({split})", r))
        if r.get("calibration"):
            c = r["calibration"]
            out.print(
                f"  calibrated min_coverage on the tune split: {c['threshold']} → refusal accuracy "
                f"{c['refusal_accuracy']:.3f}, false refusals {c['false_refusal']:.3f}"
            )


@eval.command("embedder")
def eval_embedder(
    pairs: Path = typer.Option(..., "--pairs", help="pairs JSONL (its valid split is held out)"),
    run: Path = typer.Option(None, "--run", help="a `train embedder --out` folder: base + every epoch"),
    models: list[str] = typer.Option(None, "--model", help="model folder(s) to compare instead; repeatable"),
    out_dir: Path = typer.Option(Path("runs/embedder-eval"), "--out", help="folder for the PNGs and JSON"),
    ks: str = typer.Option("1,5,10", "--k", help="Recall@k cut-offs, comma-separated"),
    max_seq_length: int = typer.Option(None, "--max-seq-length"),
    cache: bool = typer.Option(
        True, "--cache/--no-cache", help="reuse/keep vectors in the index's embedding cache"
    ),
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
    from dnfbot.retrieval.encoders import model_folder, resolve_prefixes

    if run:
        checkpoints = run_models(run)
    elif models:
        checkpoints = [(Path(m).name or m, model_folder(m, s.home)) for m in models]
    else:
        raise InputError("give --run DIR (a training output) or --model PATH")
    # empty prefixes in the settings = the first model's own prompts (e5: "query: " / "passage: ")
    prefixes = resolve_prefixes(
        checkpoints[0][1], "sentence-transformers", s.dense.query_prefix, s.dense.passage_prefix
    )
    try:
        cutoffs = tuple(int(x) for x in ks.split(",") if x.strip())
    except ValueError:
        raise InputError(f"--k {ks}: expected integers like 1,5,10") from None
    r = evaluate_embedders(
        checkpoints,
        pairs,
        out_dir,
        ks=cutoffs,
        query_prefix=prefixes[0],
        passage_prefix=prefixes[1],
        max_seq_length=max_seq_length,
        cache_dir=s.resolve_index_dir(None) / "embedding-cache" if cache else None,
    )
    show(r, json_out, lambda r: out.print(format_report(r)))
