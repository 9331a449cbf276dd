"""A tiny OpenAI-compatible chat server on loopback, for tests and demos of the `openai` back end — no model.

    python -m dnfbot.serve.fake_openai --port 8001      # prints "READY http://127.0.0.1:8001/v1"

POST /v1/chat/completions (streaming or not) answers from the prompt it was given, so a test can see that the
RAG prompt arrived intact: the reply is "<title> 공략에 따르면 …" built from the first <document title="…"> of the
last user message, or NO_INFO_ANSWER when the context block is empty. Attributes script the behaviour and may
be changed while it runs: `token_delay_s` (pause after each streamed token), `status` (e.g. 500: every chat
request fails with that status). With `api_key` set, a request without `Authorization: Bearer <key>` gets 401.
Every request body is kept in `requests`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from dnfbot import NO_INFO_ANSWER

_TITLE_RE = re.compile(r'<document index="\d+" title="([^"]*)">')
NO_CONTEXT_MARK = "(참고할 내용 없음)"


def reply_for(messages: list[dict]) -> str:
    """The scripted answer: grounded in the first passage title, or the no-information sentence."""
    user = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
    m = _TITLE_RE.search(user)
    if m is None or NO_CONTEXT_MARK in user:
        return NO_INFO_ANSWER
    return f"{m.group(1)} 공략에 따르면 이렇게 하시면 됩니다."


class FakeOpenAI:
    """Run with `with FakeOpenAI() as fake: ... fake.base_url`; the server lives in a daemon thread."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None, token_delay_s: float = 0.0
    ):
        self.api_key = api_key
        self.token_delay_s = token_delay_s
        self.status = 200
        self.requests: list[dict] = []
        self.auth_headers: list[str | None] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer((host, port), self._handler())
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection; the body ends when the socket closes

            def log_message(self, *args) -> None:  # quiet: tests read `requests` instead
                pass

            def _json(self, status: int, obj: dict) -> None:
                data = json.dumps(obj, ensure_ascii=False).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    self._json(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                auth = self.headers.get("Authorization")
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                with fake._lock:
                    fake.requests.append(body)
                    fake.auth_headers.append(auth)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._json(404, {"error": {"message": "not found"}})
                if fake.api_key is not None and auth != f"Bearer {fake.api_key}":
                    return self._json(
                        401, {"error": {"message": "Incorrect API key provided", "type": "auth"}}
                    )
                messages = body.get("messages") or []
                if fake.status != 200:
                    return self._json(
                        fake.status, {"error": {"message": "the model crashed", "type": "server_error"}}
                    )
                text = reply_for(messages)
                model = body.get("model", "fake-model")
                if not body.get("stream"):
                    return self._json(
                        200,
                        {
                            "id": "chatcmpl-fake",
                            "object": "chat.completion",
                            "created": int(time.time()),
                            "model": model,
                            "choices": [
                                {
                                    "index": 0,
                                    "message": {"role": "assistant", "content": text},
                                    "finish_reason": "stop",
                                }
                            ],
                            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                        },
                    )
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                delay = fake.token_delay_s
                pieces = re.findall(r"\S+\s*", text)
                try:
                    for i, piece in enumerate([None, *pieces, ""]):
                        delta = {"role": "assistant", "content": ""} if piece is None else {"content": piece}
                        finish = "stop" if i == len(pieces) + 1 else None
                        chunk = {
                            "id": "chatcmpl-fake",
                            "object": "chat.completion.chunk",
                            "created": int(time.time()),
                            "model": model,
                            "choices": [
                                {
                                    "index": 0,
                                    "delta": delta if finish is None else {},
                                    "finish_reason": finish,
                                }
                            ],
                        }
                        self.wfile.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode())
                        self.wfile.flush()
                        if delay and piece:
                            time.sleep(delay)
                    self.wfile.write(b"data: [DONE]\n\n")
                except (BrokenPipeError, ConnectionResetError):  # the client went away mid-stream
                    pass

        return Handler


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m dnfbot.serve.fake_openai")
    p.add_argument("--port", type=int, default=0)
    a = p.parse_args(argv)
    with FakeOpenAI(port=a.port) as fake:
        print(f"READY {fake.base_url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
