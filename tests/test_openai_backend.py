"""The `openai` generator against a real local OpenAI-compatible HTTP server (dnfbot.bench.fake_openai)."""

from __future__ import annotations

import socket

import pytest

pytest.importorskip("openai")  # the serve (or synth) extra

from dnfbot import NO_INFO_ANSWER
from dnfbot.bench.fake_openai import FakeOpenAI
from dnfbot.config import GenerationSettings
from dnfbot.errors import DnfbotError, InputError
from dnfbot.generate import GenerationRequest, Passage, get_generator

SECRET = "sk-test-0123456789abcdef"
PASSAGE = Passage("2#1", "2", "노블레스 코드 더스크 리뷰", 1, "더스크는 고정 피로도 30을 소모합니다.", 3.0)


def _request(**kw) -> GenerationRequest:
    return GenerationRequest(question="더스크 피로도 얼마나 들어?", passages=[PASSAGE], **kw)


@pytest.fixture(autouse=True)
def _no_ambient_openai_env(monkeypatch):
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)


def test_streams_tokens_from_the_server_with_the_rag_prompt():
    with FakeOpenAI() as fake:
        gen = get_generator(
            "openai", settings=GenerationSettings(model="eeve", base_url=fake.base_url, history_turns=1)
        )
        history = [
            {"role": "user", "content": "첫 질문"},
            {"role": "assistant", "content": "첫 답"},
            {"role": "user", "content": "둘째 질문"},
            {"role": "assistant", "content": "둘째 답"},
        ]
        pieces = list(gen.stream(_request(history=history, max_new_tokens=77, temperature=0.3)))
        assert len(pieces) > 1  # streamed, not one blob
        assert "".join(pieces) == "노블레스 코드 더스크 리뷰 공략에 따르면 이렇게 하시면 됩니다."
        body = fake.requests[-1].body
        assert body["model"] == "eeve" and body["stream"] is True
        assert body["max_tokens"] == 77 and body["temperature"] == 0.3
        roles = [m["role"] for m in body["messages"]]
        assert roles == ["system", "user", "assistant", "user"]  # history_turns=1 keeps the last turn only
        assert body["messages"][1]["content"] == "둘째 질문"
        assert '<document index="1" title="노블레스 코드 더스크 리뷰">' in body["messages"][-1]["content"]
        # no passages: the context block says so and the (rule-following) server refuses
        assert gen.generate(GenerationRequest("아무거나", [])) == NO_INFO_ANSWER
        assert fake.requests[-1].authorization == "Bearer not-needed"  # a local server gets no real key


def test_key_comes_from_env_and_never_leaks(monkeypatch):
    with FakeOpenAI(api_key=SECRET) as fake:
        monkeypatch.setenv("OPENAI_API_KEY", SECRET)
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        gen = get_generator("openai", settings=GenerationSettings(model="m"))
        assert gen.generate(_request()).startswith("노블레스")
        assert fake.requests[-1].authorization == f"Bearer {SECRET}"
        assert SECRET not in repr(gen)
        monkeypatch.setenv("OPENAI_API_KEY", SECRET + "-wrong")
        wrong = get_generator("openai", settings=GenerationSettings(model="m"))
        with pytest.raises(DnfbotError, match="answered 401") as e:
            wrong.generate(_request())
        assert SECRET not in str(e.value)
        fake.status = 500
        with pytest.raises(DnfbotError, match="answered 500"):
            gen.generate(_request())


def test_unreachable_server_is_a_clear_error():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    gen = get_generator(
        "openai", settings=GenerationSettings(model="m", base_url=f"http://127.0.0.1:{port}/v1"), timeout=3
    )
    with pytest.raises(DnfbotError, match=f"cannot reach http://127.0.0.1:{port}/v1"):
        gen.generate(_request())


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (GenerationSettings(model="m"), "give --base-url or OPENAI_BASE_URL"),
        (
            GenerationSettings(model="m", base_url="https://llm.example.com/v1"),
            "OPENAI_API_KEY is not set; it is required for https://llm.example.com/v1",
        ),
        (GenerationSettings(model="m", base_url="ftp://127.0.0.1/v1"), "is not an http(s) URL"),
        (GenerationSettings(base_url="http://localhost:11434/v1"), "needs --model"),
    ],
)
def test_configuration_errors_are_input_errors(settings, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        get_generator("openai", settings=settings)
