"""Verbs: `dnfbot data sft`, `dnfbot data rm`, `dnfbot data ppo` (training sets from `dnfbot synth qa` output)."""

from __future__ import annotations

from pathlib import Path

import typer

from dnfbot.cli_util import emit_json, out

JsonOpt = typer.Option(False, "--json", help="print one JSON summary on stdout")
QaOpt = typer.Option(None, "--qa", help="QA JSONL from `dnfbot synth qa`; repeatable")
ValidOpt = typer.Option(0.05, "--valid-fraction", help="share of records in the 'valid' split (stable hash)")
SplitByOpt = typer.Option("doc", "--split-by", help="doc (held-out articles) | question")
DedupOpt = typer.Option(
    0.9, "--dedup-threshold", help="trigram Jaccard above which questions are duplicates (>1: exact only)"
)
RatioOpt = typer.Option(
    None, "--import-ratio", help="imported records per own record (stable sample); default: all of them"
)
SplitFilesOpt = typer.Option(
    False, "--split-files", help="also write <out>.train.jsonl and <out>.valid.jsonl"
)


def _print(kind: str, s: dict) -> None:
    out.print(
        f"[green]data {kind}[/]: {s['records']} records ({s['train']} train, {s['valid']} valid) → {s['out']}; "
        f"{s['duplicates_removed']} duplicate questions removed, {s.get('imported', 0)} imported"
    )


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    @groups["data"].command("sft")
    def data_sft(
        out_path: Path = typer.Option(
            ..., "--out", help="SFT JSONL to write (prompt, completion, text, split)"
        ),
        qa: list[Path] = QaOpt,
        answers: str = typer.Option(
            "long", "--answers", help="answers that become completions: long,medium,short"
        ),
        passages: bool = typer.Option(
            False, "--passages", help="also '{subject}에 대한 설명…' → passage records"
        ),
        corpus: list[Path] = typer.Option(
            None, "--corpus", help="corpus for --passages (default: configured)"
        ),
        imports: list[Path] = typer.Option(None, "--import", help="KoChatGPT SFT file (prompt/completion)"),
        import_ratio: float = RatioOpt,
        valid_fraction: float = ValidOpt,
        split_by: str = SplitByOpt,
        dedup_threshold: float = DedupOpt,
        split_files: bool = SplitFilesOpt,
        config: Path = typer.Option(None, "--config", help="YAML settings file"),
        json_out: bool = JsonOpt,
    ):
        """SFT records '### 질문: …\\n\\n### 답변: …<|endoftext|>' from QA records (+ passages, + imports)."""
        from dnfbot.config import load_settings
        from dnfbot.datasets.build import build_sft
        from dnfbot.errors import InputError

        if not qa and not imports:
            raise InputError("give --qa FILE (from `dnfbot synth qa`) and/or --import FILE")
        settings = load_settings(config)
        s = build_sft(
            qa or [],
            out_path,
            kinds=answers,
            passages=passages,
            corpus=[str(p) for p in corpus] if corpus else settings.corpus,
            chunk_size=settings.chunk.size,
            chunk_overlap=settings.chunk.overlap,
            imports=imports or [],
            import_ratio=import_ratio,
            valid_fraction=valid_fraction,
            split_by=split_by,
            dedup_threshold=dedup_threshold,
            split_files=split_files,
        )
        emit_json(s) if json_out else _print("sft", s)

    @groups["data"].command("rm")
    def data_rm(
        out_path: Path = typer.Option(
            ..., "--out", help="pairwise JSONL to write (prompt, chosen, rejected, split)"
        ),
        qa: list[Path] = QaOpt,
        ranking: str = typer.Option(
            "long>medium>short", "--ranking", help="best first, e.g. long>medium>short"
        ),
        ranking_out: Path = typer.Option(
            None, "--ranking-out", help="ranking-format JSONL (default: <out stem>.ranking.jsonl)"
        ),
        imports: list[Path] = typer.Option(
            None, "--import", help="KoChatGPT RM file (completion_0..2, ranking)"
        ),
        import_ratio: float = RatioOpt,
        valid_fraction: float = ValidOpt,
        split_by: str = SplitByOpt,
        dedup_threshold: float = DedupOpt,
        split_files: bool = SplitFilesOpt,
        json_out: bool = JsonOpt,
    ):
        """Reward-model data: ranking records and three (chosen, rejected) pairs per ranking."""
        from dnfbot.datasets.build import build_rm

        s = build_rm(
            qa or [],
            out_path,
            ranking=ranking,
            ranking_out=ranking_out,
            imports=imports or [],
            import_ratio=import_ratio,
            valid_fraction=valid_fraction,
            split_by=split_by,
            dedup_threshold=dedup_threshold,
            split_files=split_files,
        )
        if json_out:
            emit_json(s)
        else:
            _print("rm", s)
            out.print(f"{s['ranking_records']} ranking records ({s['ranking']}) → {s['ranking_out']}")

    @groups["data"].command("ppo")
    def data_ppo(
        out_path: Path = typer.Option(..., "--out", help="prompts JSONL to write ({prompt, source, split})"),
        qa: list[Path] = QaOpt,
        questions: str = typer.Option(
            "valid", "--questions", help="which QA questions: valid (held out of SFT/RM) | train | all"
        ),
        imports: list[Path] = typer.Option(
            None, "--import", help="KoChatGPT prompt list, e.g. ../shared/prompts/kochatgpt_3_PPO.json"
        ),
        import_ratio: float = RatioOpt,
        limit: int = typer.Option(None, "--limit", min=1, help="at most N prompts (keeps the mix)"),
        valid_fraction: float = ValidOpt,
        split_by: str = SplitByOpt,
        dedup_threshold: float = DedupOpt,
        json_out: bool = JsonOpt,
    ):
        """PPO prompts from held-out questions, mixed with imported KoChatGPT prompts by ratio."""
        from dnfbot.datasets.build import build_ppo
        from dnfbot.errors import InputError

        if not qa and not imports:
            raise InputError("give --qa FILE (from `dnfbot synth qa`) and/or --import FILE")
        s = build_ppo(
            qa or [],
            out_path,
            questions=questions,
            imports=imports or [],
            import_ratio=import_ratio,
            limit=limit,
            valid_fraction=valid_fraction,
            split_by=split_by,
            dedup_threshold=dedup_threshold,
        )
        if json_out:
            emit_json(s)
        else:
            out.print(
                f"[green]data ppo[/]: {s['records']} prompts ({s['from_qa']} from QA '{s['questions']}' questions, "
                f"{s['imported']} imported) → {s['out']}; {s['duplicates_removed']} duplicates removed"
            )
