"""The web chat page, run by `dnfbot ui` (Streamlit: a chat page in one Python file, no front-end build).

Sidebar: category pickers (공략 → 레이드/레기온/기타 던전 → a dungeon; 장비 → a board; 직업 → a class) that
become retrieval filters, and the back-end selector. Main: the conversation, answers streamed as they are
generated, sources in a collapsible list, and a distinct "no information" state. Under each answer: 👍/👎 and
"고쳐 쓰기" (write the right answer), kept in the answer log (dnfbot/feedback) with the answer's trace.
Arguments after `--` are the same as `dnfbot ask`'s (--index-dir, --config, --mode, --backend, --model,
--adapter, --base-url, --4bit), plus --no-log.
"""

from __future__ import annotations

import argparse
import re
import sys

import streamlit as st

from dnfbot import NO_INFO_ANSWER
from dnfbot.corpus.vocabulary import CATEGORY1, CATEGORY2
from dnfbot.errors import DnfbotError
from dnfbot.rag import is_refusal
from dnfbot.serve.ui_support import (
    ALL,
    backend_label,
    board_label,
    category_tree,
    filters_caption,
    filters_for,
)

TITLE = "던파 공략 챗봇"
NO_INFO_HINT = "관련 공략을 찾지 못했어요. 검색 범위를 넓히거나 다른 말로 물어보세요."
_MD_SPECIAL = re.compile(r"([\\`*_#~\[\]<>|$])")  # guide text is shown as text, never as Markdown or math


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dnfbot ui")
    for flag in ("--index-dir", "--config", "--mode", "--backend", "--model", "--adapter", "--base-url"):
        p.add_argument(flag)
    p.add_argument("--4bit", dest="load_in_4bit", action="store_true", default=None)
    p.add_argument("--no-log", dest="log", action="store_false")
    return p.parse_known_args(argv)[0]


@st.cache_resource(show_spinner="공략 색인을 불러오는 중…")
def _backends(index_dir, config, mode, backend, model, adapter, base_url, load_in_4bit):
    from dnfbot.serve.backends import open_backends

    return open_backends(
        index_dir,
        config,
        backend,
        mode,
        model=model,
        adapter=adapter,
        base_url=base_url,
        load_in_4bit=load_in_4bit,
    )


@st.cache_resource
def _answer_log(enabled: bool, _home):
    """One writer per page server (every browser session shares it); None when logging is off."""
    from dnfbot.feedback.store import AnswerLog

    return AnswerLog.open(home=_home) if enabled else None


@st.cache_resource
def _tree(_backends):
    return category_tree(_backends.get(None).index.chunks)


def escape(text: str) -> str:
    return _MD_SPECIAL.sub(r"\\\1", text)


def show_sources(sources: list[dict]) -> None:
    with st.expander(f"출처 {len(sources)}건", expanded=False):
        for i, s in enumerate(sources, 1):
            st.markdown(f"{i}. **{escape(s['title'])}** · 글 {s['doc_id']}, {s['part']}부분")


def _store_feedback(answer_log, msg: dict, rating: str | None, correction: str | None) -> None:
    from dnfbot.feedback.trace import make_feedback

    try:
        answer_log.feedback(make_feedback(msg["answer_id"], rating, correction, channel="web"))
        msg["feedback_note"] = (
            "고친 답변을 저장했어요. 고마워요!" if correction else "평가를 저장했어요. 고마워요!"
        )
    except DnfbotError as e:
        msg["feedback_note"] = f"피드백을 저장하지 못했어요: {e}"


def _rated(answer_log, msg: dict) -> None:
    value = st.session_state.get(f"rate:{msg['answer_id']}")
    if value is not None:  # st.feedback("thumbs"): 0 = 👎, 1 = 👍
        _store_feedback(answer_log, msg, "up" if value == 1 else "down", None)


def _corrected(answer_log, msg: dict) -> None:
    text = (st.session_state.get(f"fix:{msg['answer_id']}:text") or "").strip()
    if text:
        _store_feedback(answer_log, msg, "down", text)
    else:
        msg["feedback_note"] = "맞는 답을 써 주세요."


def feedback_controls(answer_log, msg: dict) -> None:
    """👍/👎 and 고쳐 쓰기 under an answer that is in the answer log."""
    aid = msg.get("answer_id")
    if answer_log is None or not aid:
        return
    left, right = st.columns([1, 5], vertical_alignment="center")
    with left:
        st.feedback("thumbs", key=f"rate:{aid}", on_change=_rated, args=(answer_log, msg))
    with (
        right,
        st.popover("고쳐 쓰기", icon="✏️"),
        st.form(key=f"fix:{aid}", clear_on_submit=True, border=False),
    ):
        st.text_area("맞는 답을 써 주세요", key=f"fix:{aid}:text", max_chars=5000)
        st.form_submit_button("보내기", on_click=_corrected, args=(answer_log, msg))
    if msg.get("feedback_note"):
        st.caption(msg["feedback_note"])


def show_message(msg: dict, answer_log=None) -> None:
    with st.chat_message(msg["role"]):
        if msg["role"] == "assistant" and not msg.get("answered", True):
            st.info(f"{NO_INFO_ANSWER}  \n{NO_INFO_HINT}", icon="🔎")
        elif msg.get("error"):
            st.error(msg["content"])
        else:
            st.markdown(escape(msg["content"]))
        if msg.get("sources"):
            show_sources(msg["sources"])
        if msg.get("generator"):
            st.caption(f"답변 생성기: {msg['generator']}")
        feedback_controls(answer_log, msg)


def sidebar(backends, tree):
    with st.sidebar:
        st.header("검색 범위")
        c1 = st.selectbox("분류", [ALL, *CATEGORY1], key="category1")
        c2 = c3 = None
        if c1 == "공략":
            c2 = st.selectbox("공략 종류", [ALL, *CATEGORY2], key="category2")
            if c2 != ALL:
                boards = tree.dungeons.get(c2, [])
                c3 = st.selectbox("던전", [ALL, *boards], format_func=board_label, key=f"dungeon:{c2}")
        elif c1 == "장비":
            c3 = st.selectbox("게시판", [ALL, *tree.equipment], key="equipment")
        elif c1 == "직업":
            c3 = st.selectbox("직업", [ALL, *tree.classes], key="class")
        filters = filters_for(c1, c2, c3)
        st.caption(filters_caption(filters))
        st.divider()
        st.header("답변 생성기")
        name = st.radio(
            "답변 생성기",
            backends.names,
            format_func=lambda n: backend_label(n, backends.models.get(n)),
            key="backend",
            label_visibility="collapsed",
        )
        st.divider()
        if st.button("대화 지우기", width="stretch"):
            st.session_state.messages = []
            st.rerun()
    return filters, name


def answer(rag, question: str, filters, history: list[dict], label: str, traced=None) -> dict:
    """Stream one answer into the open chat bubble; the message to keep in the history (with its answer_id when
    `traced` logs it)."""
    msg = {"role": "assistant", "generator": label, "sources": [], "answered": False}
    try:
        with st.spinner("공략을 찾는 중…"):
            sources, tokens = rag.ask_stream(question, filters, history)
        if not sources:
            st.info(f"{NO_INFO_ANSWER}  \n{NO_INFO_HINT}", icon="🔎")
            text = "".join(tokens).strip()  # the refusal (or the self-introduction) the log keeps
            aid = traced.done_stream(question, text) if traced else None
            return dict(msg, content=NO_INFO_ANSWER, answer_id=aid)
        parts: list[str] = []

        def shown():
            for t in tokens:
                parts.append(t)
                yield escape(t)

        st.write_stream(shown())
        text = "".join(parts).strip()
        aid = traced.done_stream(question, text) if traced else None
        if is_refusal(text):  # the model itself found nothing usable
            st.info(NO_INFO_HINT, icon="🔎")
            return dict(msg, content=NO_INFO_ANSWER, answer_id=aid)
        show_sources(sources)
        return dict(msg, content=text, sources=sources, answered=True, answer_id=aid)
    except DnfbotError as e:
        text = f"답변을 만들지 못했습니다: {e}"
        st.error(text)
        return dict(msg, content=text, answered=True, error=True)
    finally:
        st.caption(f"답변 생성기: {label}")


def _new_id() -> str:
    from dnfbot.feedback.trace import new_id

    return new_id()


def main(argv: list[str]) -> None:
    st.set_page_config(page_title=TITLE, page_icon="⚔️")
    a = _args(argv)
    try:
        backends = _backends(
            a.index_dir, a.config, a.mode, a.backend, a.model, a.adapter, a.base_url, a.load_in_4bit
        )
    except DnfbotError as e:
        st.error(f"색인을 열 수 없습니다: {e}")
        st.stop()
    answer_log = _answer_log(a.log, backends.get(None).settings.home)
    conversation = st.session_state.setdefault("conversation", _new_id())
    filters, name = sidebar(backends, _tree(backends))
    label = backend_label(name, backends.models.get(name))
    st.title(TITLE)
    st.caption(
        "던전앤파이터 공식 홈페이지의 공략 게시글에서 찾아 답합니다. 게시글에 없는 내용은 모른다고 답해요."
    )
    messages = st.session_state.setdefault("messages", [])
    for m in messages:
        show_message(m, answer_log)
    question = st.chat_input("궁금한 것을 물어보세요 (예: 무의 장막 신수 추천)")
    if not question:
        return
    history = [{"role": m["role"], "content": m["content"]} for m in messages if not m.get("error")]
    user = {"role": "user", "content": question}
    messages.append(user)
    show_message(user)
    with st.chat_message("assistant"):
        from dnfbot.feedback.trace import Traced

        traced = Traced(answer_log, backends.get(name), "web", history, filters, conversation)
        messages.append(answer(traced.rag, question, filters, history, label, traced))
        feedback_controls(answer_log, messages[-1])


main(sys.argv[1:])
