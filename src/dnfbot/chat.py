"""`dnfbot chat`: a terminal chat with history, category filters and sources on demand."""

from __future__ import annotations

from dnfbot import NO_INFO_ANSWER
from dnfbot.console import out
from dnfbot.corpus.vocabulary import CATEGORY1, CATEGORY2
from dnfbot.errors import DnfbotError, InputError
from dnfbot.feedback.trace import Traced, make_feedback, new_id
from dnfbot.rag import is_refusal
from dnfbot.retrieval.sparse import Filters

HELP = """명령어 (commands):
  /filter 직업 소드마스터      category1 + category3 (class or board) filter
  /filter 공략 레이드          category1 + category2
  /filter off                  clear filters
  /sources                     sources of the last answer
  /history                     this conversation so far
  /good [comment]              the last answer was right (👍)
  /bad [the right answer]      the last answer was wrong (👎), optionally with the answer it should have given
  /help, /quit"""


def parse_filter(args: str) -> Filters:
    """'직업 소드마스터' → category1=직업, category3=소드마스터; '공략 레이드' → category2=레이드."""
    parts = args.split(maxsplit=1)
    if not parts or parts[0] in ("off", "none", "해제"):
        return Filters()
    c1 = parts[0]
    if c1 not in CATEGORY1:
        raise InputError(f"unknown category1 '{c1}' (choose from {', '.join(CATEGORY1)})")
    rest = parts[1].strip() if len(parts) > 1 else None
    if c1 == "공략" and rest in CATEGORY2:
        return Filters(c1, rest, None)
    return Filters(c1, None, rest)


def rate(answer_log, answer_id: str | None, good: bool, args: str) -> str:
    """/good [comment], /bad [correction]: stored before the prompt comes back (a one-line message either way)."""
    if answer_log is None:
        return "[yellow]the answer log is off: feedback is not kept (start without --no-log)"
    if answer_id is None:
        return "[yellow]no answer to rate yet"
    text = args.strip() or None
    try:
        fb = make_feedback(answer_id, "up" if good else "down", None if good else text, text if good else None,
                           channel="chat")  # fmt: skip
        answer_log.feedback(fb)
    except DnfbotError as e:
        return f"[red]{e}"
    if good:
        return "[green]👍 고마워요! 피드백을 저장했어요."
    return "[green]👎 저장했어요." + (
        " 고친 답변도 함께 저장했어요." if text else " /bad 뒤에 맞는 답을 써 주셔도 돼요."
    )


def run_chat(rag, input_fn=input, answer_log=None) -> list[dict]:
    """The REPL. input_fn is injectable so the loop can be driven in tests. Returns the history.
    With an answer log, every answer is logged and /good, /bad rate the last one."""
    filters = Filters()
    history: list[dict] = []
    last_sources: list[dict] = []
    last_id: str | None = None
    conversation = new_id()  # random per session: links the turns, names nobody
    out.print("[bold]던파 가이드 챗봇[/] — 질문을 입력하세요. /help 로 명령어를 볼 수 있습니다.")
    while True:
        try:
            line = input_fn("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            out.print()
            break
        if not line:
            continue
        if line.startswith("/"):
            cmd, _, args = line[1:].partition(" ")
            if cmd in ("quit", "exit", "q"):
                break
            if cmd == "help":
                out.print(HELP)
            elif cmd == "filter":
                try:
                    filters = parse_filter(args)
                    out.print(f"filter: {filters.to_dict() or 'off'}")
                except InputError as e:
                    out.print(f"[red]{e}")
            elif cmd == "sources":
                for i, s in enumerate(last_sources, 1):
                    out.print(
                        f"  {i}. {s['title']} (doc {s['doc_id']}, part {s['part']}, score {s['score']:.2f})"
                    )
                if not last_sources:
                    out.print("  (no sources)")
            elif cmd == "history":
                for turn in history:
                    out.print(f"[bold]{turn['role']}[/]: {turn['content']}")
            elif cmd in ("good", "bad"):
                out.print(rate(answer_log, last_id, cmd == "good", args))
            else:
                out.print(f"[red]unknown command /{cmd}[/] — /help")
            continue
        traced = Traced(answer_log, rag, "chat", history, filters, conversation)
        text, last_sources = _stream_answer(traced.rag, line, filters, history)
        last_id = traced.done_stream(line, text)
        if last_sources:
            out.print(f"[dim]  출처: {last_sources[0]['title']} 외 {len(last_sources) - 1}건 — /sources")
        history += [{"role": "user", "content": line}, {"role": "assistant", "content": text}]
    return history


def _stream_answer(rag, question: str, filters: Filters, history: list[dict]) -> tuple[str, list[dict]]:
    """Print the answer as the back end produces it (an LLM takes seconds); the same gate as `ask`."""
    sources, stream = rag.ask_stream(question, filters, history)
    out.print("[bold cyan]bot>[/] ", end="")
    parts = []
    for piece in stream:
        parts.append(piece)
        out.print(piece, end="", markup=False, highlight=False)
    text = "".join(parts).strip()
    if is_refusal(text):  # a model that declines is a refusal, without sources
        if not text:
            out.print(NO_INFO_ANSWER, end="", markup=False, highlight=False)
        text, sources = NO_INFO_ANSWER, []
    out.print()
    return text, sources
