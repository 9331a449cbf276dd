"""The `hf` back end (a tiny random-init GPTNeoX with the real polyglot-ko tokenizer) behind the HTTP API.

Skips until dnfbot.generate.hf is present (written by the training area) or without the shared tokenizer."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("httpx")
pytest.importorskip("fastapi")  # the serve extra
pytest.importorskip("uvicorn")

import httpx

from support.guide_index import mini_index


@pytest.mark.slow
def test_hf_backend_streams_through_the_api(tmp_path, polyglot_tokenizer_dir):
    pytest.importorskip("dnfbot.generate.hf")
    torch = pytest.importorskip("torch")
    from dnfbot.models import init_tiny
    from dnfbot.serve.app import create_app
    from dnfbot.serve.backends import open_backends
    from dnfbot.serve.run import ServerThread

    torch.set_num_threads(1)
    model_dir = init_tiny("gpt-neox", polyglot_tokenizer_dir, tmp_path / "tiny")
    mini_index(tmp_path)
    b = open_backends(tmp_path / "index", backend="hf", model=str(model_dir), max_new_tokens=8)
    assert b.names == ["hf", "extractive"]
    with ServerThread(create_app(b)) as url:
        models = httpx.get(url + "/v1/models").json()["data"]
        assert models[0]["id"] == "dnfbot-hf" and models[0]["dnfbot_model"] == str(model_dir)
        body = {
            "model": "dnfbot-hf",
            "stream": True,
            "max_tokens": 6,
            "messages": [{"role": "user", "content": "더스크 피로도 얼마나 들어?"}],
        }
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as resp:
            assert resp.status_code == 200
            events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert (
            chunks[0]["dnfbot_sources"][0]["doc_id"] == "2"
            and chunks[-1]["choices"][0]["finish_reason"] == "stop"
        )
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        assert text.strip()  # a random model says nonsense, but it says it token by token through the stream
