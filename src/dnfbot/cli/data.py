"""`dnfbot data sft | rm | ppo | pairs`: training sets from `dnfbot synth qa` output (and KoChatGPT imports)."""

from __future__ import annotations

from pathlib import Path

import typer

from dnfbot.cli.options import CONFIG, CORPUS, JSON, show, with_options
from dnfbot.datasets.build import PPODataOptions, RMDataOptions, SFTDataOptions

data = typer.Typer(no_args_is_help=True)
OUT = "--out"
QA = typer.Option(None, "--qa", help="QA JSONL from `dnfbot synth qa`; repeatable")


def _imports(help_text: str):
    return typer.Option(None, "--import", help=help_text)


def _need_input(qa: list | None, imports: list | None) -> None:
    from dnfbot.errors import InputError

    if not qa and not imports:
        raise InputError("give --qa FILE (from `dnfbot synth qa`) and/or --import FILE")


def _print(kind: str):
    def render(s: dict) -> None:
        from dnfbot.console import out

        out.print(
            f"[green]data {kind}[/]: {s['records']} records ({s['train']} train, {s['valid']} valid) → {s['out']}; "
            f"{s['duplicates_removed']} duplicate questions removed, {s.get('imported', 0)} imported"
        )
        if "ranking_out" in s:
            out.print(f"{s['ranking_records']} ranking records ({s['ranking']}) → {s['ranking_out']}")

    return render


@data.command("sft")
@with_options(SFTDataOptions)
def data_sft(
    out_path: Path = typer.Option(..., OUT, help="SFT JSONL to write (prompt, completion, text, split)"),
    qa: list[Path] = QA,
    corpus: list[Path] = CORPUS,
    imports: list[Path] = _imports("KoChatGPT SFT file (prompt/completion)"),
    config: Path = CONFIG,
    json_out: bool = JSON,
    options: dict = None,
):
    """SFT records '### 질문: …\\n\\n### 답변: …<|endoftext|>' from QA records (+ passages, + imports)."""
    from dnfbot.config import load_settings
    from dnfbot.datasets.build import build_sft

    _need_input(qa, imports)
    settings = load_settings(config)
    paths = [str(p) for p in corpus] if corpus else settings.corpus
    s = build_sft(qa or [], out_path, imports=imports or [], corpus=paths, chunk=settings.chunk, **options)
    show(s, json_out, _print("sft"))


@data.command("rm")
@with_options(RMDataOptions)
def data_rm(
    out_path: Path = typer.Option(..., OUT, help="pairwise JSONL to write (prompt, chosen, rejected, split)"),
    qa: list[Path] = QA,
    imports: list[Path] = _imports("KoChatGPT RM file (completion_0..2, ranking)"),
    json_out: bool = JSON,
    options: dict = None,
):
    """Reward-model data: ranking records and three (chosen, rejected) pairs per ranking."""
    from dnfbot.datasets.build import build_rm

    show(build_rm(qa or [], out_path, imports=imports or [], **options), json_out, _print("rm"))


@data.command("ppo")
@with_options(PPODataOptions)
def data_ppo(
    out_path: Path = typer.Option(..., OUT, help="prompts JSONL to write ({prompt, source, split})"),
    qa: list[Path] = QA,
    imports: list[Path] = _imports("KoChatGPT prompt list, e.g. ../shared/prompts/kochatgpt_3_PPO.json"),
    json_out: bool = JSON,
    options: dict = None,
):
    """PPO prompts from held-out questions, mixed with imported KoChatGPT prompts by ratio."""
    from dnfbot.console import out
    from dnfbot.datasets.build import build_ppo

    _need_input(qa, imports)
    s = build_ppo(qa or [], out_path, imports=imports or [], **options)
    show(s, json_out, lambda s: out.print(
        f"[green]data ppo[/]: {s['records']} prompts ({s['from_qa']} from QA '{s['questions']}' questions, "
        f"{s['imported']} imported) → {s['out']}; {s['duplicates_removed']} duplicates removed"
    ))  # fmt: skip


@data.command("pairs")
def data_pairs(
    out_path: Path = typer.Option(..., OUT, help="pairs JSONL to write"),
    synth: list[Path] = typer.Option(
        None, "--synth", help="synthesised QA JSONL (`dnfbot synth qa`); repeatable"
    ),
    ict: int = typer.Option(0, "--ict", min=0, help="also N sentence-as-query pairs per chunk (no LLM)"),
    corpus: list[Path] = CORPUS,
    valid_fraction: float = typer.Option(0.1, "--valid-fraction", min=0.0, max=1.0),
    split_by: str = typer.Option("doc", "--split-by", help="doc (held-out articles) | question"),
    config: Path = CONFIG,
    json_out: bool = JSON,
):
    """(question, passage) pairs for `dnfbot train embedder`, with a stable train/valid split."""
    from dnfbot.config import load_settings
    from dnfbot.console import out
    from dnfbot.datasets.pairs import build_pairs

    s = load_settings(config)
    paths = [str(p) for p in corpus] if corpus else s.corpus
    r = build_pairs(
        paths, out_path, synth=synth or None, ict_per_chunk=ict, valid_fraction=valid_fraction, split_by=split_by,
        chunk=s.chunk,
    )  # fmt: skip
    missing = r["synth_missing_chunk"]
    show(r, json_out, lambda r: out.print(
        f"[green]wrote[/] {r['pairs']} pairs ({r['train']} train, {r['valid']} valid) to {r['out']}; "
        f"{r['chunks_covered']}/{r['chunks']} chunks covered"
        + (f"; {missing} synth records skipped (chunk not in corpus)" if missing else "")
    ))  # fmt: skip
