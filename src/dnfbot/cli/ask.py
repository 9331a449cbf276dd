"""Top-level verbs that answer: search, ask, chat, generate — and config, the effective settings."""

from __future__ import annotations

from pathlib import Path

import typer

from dnfbot.cli.options import (
    CONFIG,
    JSON,
    RUN_CONFIG,
    AnswerFlags,
    QuestionFlags,
    SearchFlags,
    show,
    with_options,
)
from dnfbot.train.options import GenerateOptions

commands = typer.Typer()


@commands.command("search")
@with_options(SearchFlags)
@with_options(QuestionFlags, into="asked")
def search(
    question: str = typer.Argument(None, help="질문"),
    k: int = typer.Option(5, "--k", min=1, max=100),
    with_text: bool = typer.Option(False, "--with-text", help="include each passage's text in --json output"),
    json_out: bool = JSON,
    asked: dict = None,
    options: dict = None,
):
    """Retrieve the best passages for a question (or a batch file of questions)."""
    from dnfbot.console import emit_json, out

    rag, filters, questions = QuestionFlags(**asked).open(question, options)
    for q in questions:
        hits = rag.search(q, k, filters)
        if json_out:
            results = [dict(h.source(), text=h.chunk.text) if with_text else h.source() for h in hits]
            emit_json({"question": q, "mode": rag.mode, "reranked": rag.reranker.active, "results": results})
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


@commands.command("ask")
@with_options(AnswerFlags)
@with_options(QuestionFlags, into="asked")
def ask(
    question: str = typer.Argument(None, help="질문"),
    log: bool = typer.Option(False, "--log", help="keep the answers in the answer log (answer_id in --json)"),
    json_out: bool = JSON,
    asked: dict = None,
    options: dict = None,
):
    """Answer from the guides with sources — or say there is no information."""
    from dnfbot.console import emit_json, out
    from dnfbot.feedback.trace import Traced

    rag, filters, questions = QuestionFlags(**asked).open(question, options)
    answer_log = _open_answer_log(rag) if log else None
    try:
        for q in questions:
            traced = Traced(answer_log, rag, "ask", None, filters)
            a = traced.rag.ask(q, filters)
            answer_id = traced.done(a)
            if json_out:
                ids = {"answer_id": answer_id} if answer_id else {}
                emit_json(dict({"question": q} if asked.get("queries") else {}, **a.to_dict(), **ids))
                continue
            out.rule(q)
            out.print(a.answer if a.answered else f"[yellow]{a.answer}")
            _print_sources(a.sources)
            if answer_id:
                out.print(f"[dim]answer_id {answer_id}")
    finally:
        if answer_log is not None:
            answer_log.close()  # what was answered is written before the command returns


@commands.command("chat")
@with_options(AnswerFlags)
def chat(
    log: bool = typer.Option(True, "--log/--no-log", help="keep answers in the answer log; /good, /bad"),
    options: dict = None,
):
    """Interactive chat in the terminal. /help lists the commands."""
    from dnfbot.chat import run_chat
    from dnfbot.rag import open_rag

    rag = open_rag(**options)
    answer_log = _open_answer_log(rag, required=False) if log else None
    try:
        run_chat(rag, answer_log=answer_log)
    finally:
        if answer_log is not None:
            answer_log.close()


def _open_answer_log(rag, required: bool = True):
    """The answer log under the index's home ($DNFBOT_FEEDBACK_DB overrides; 'off' switches it off)."""
    from dnfbot.errors import InputError
    from dnfbot.feedback.store import AnswerLog

    answer_log = AnswerLog.open(home=rag.settings.home)
    if answer_log is None and required:
        raise InputError("--log: the answer log is switched off (DNFBOT_FEEDBACK_DB=off)")
    return answer_log


@commands.command("generate")
@with_options(GenerateOptions)
def generate(
    question: str = typer.Argument(..., help="the question (wrapped in '### 질문: …\\n\\n### 답변:')"),
    adapter: Path = typer.Option(None, "--adapter", help="LoRA adapter directory"),
    config: Path = RUN_CONFIG,
    raw: bool = typer.Option(False, "--raw", help="send the text as is, without the 질문/답변 format"),
    json_out: bool = JSON,
    options: dict = None,
):
    """Answer one question with a local model (+ LoRA adapter), streaming to the terminal."""
    import sys
    import time

    from dnfbot.console import emit_json
    from dnfbot.formats import model_prompt
    from dnfbot.generate.hf import DecodeOptions, generate_stream
    from dnfbot.models import load_model
    from dnfbot.options import as_dict, names
    from dnfbot.train.options import load_options, require_model

    opts = load_options("generate", config, options)
    m = require_model(opts, config)
    lm, tok = load_model(
        m,
        adapter=adapter,
        load_in_4bit=opts.load_in_4bit,
        dtype=opts.dtype,
        trust_remote_code=opts.trust_remote_code,
    )
    prompt = question if raw else model_prompt(question)
    t0 = time.time()
    pieces = []
    for piece in generate_stream(lm, tok, prompt, opts):
        pieces.append(piece)
        if not json_out:
            sys.stdout.write(piece)
            sys.stdout.flush()
    if not json_out:
        sys.stdout.write("\n")
        return
    decoding = {k: v for k, v in as_dict(opts).items() if k in names(DecodeOptions)}
    emit_json(
        {
            "question": question,
            "answer": "".join(pieces),
            "model": m,
            "adapter": str(adapter) if adapter else None,
            "seconds": round(time.time() - t0, 3),
            "options": decoding,
        }
    )


@commands.command("config")
def show_config(config: Path = CONFIG, json_out: bool = JSON):
    """Show the effective settings (defaults + YAML + environment)."""
    import yaml

    from dnfbot.config import load_settings
    from dnfbot.console import out

    s = load_settings(config)
    d = s.model_dump(mode="json")
    d["index_dir"] = str(s.index_dir)
    show(d, json_out, lambda d: out.print(yaml.safe_dump(d, allow_unicode=True, sort_keys=False)))


def _print_sources(sources: list[dict]) -> None:
    from rich.table import Table

    from dnfbot.console import out

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
