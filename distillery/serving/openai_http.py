"""A small OpenAI-compatible HTTP server base for the stand-in and the local model server.

Both serve ``POST /v1/chat/completions`` (plain and ``stream: true``), ``GET /v1/models``
and ``GET /healthz``, in the shapes of ``distillery.wire``. Malformed requests get OpenAI error
objects with 400 (or the ``wire.WireError``'s status a handler raises), unknown paths 404,
handler crashes 500; the server keeps running in each case.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from distillery import wire

MAX_BODY_BYTES = 1 << 20


@dataclass
class Completion:
    content: str | None
    model: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"
    tool_calls: list | None = None
    logprobs: list[dict] | None = None  # the chosen tokens' ``wire.token_logprob`` entries, when asked for


ChatHandler = Callable[[dict[str, Any]], Completion]


class OpenAIServer(ThreadingHTTPServer):
    """Serves ``chat`` (request body -> Completion) under the OpenAI routes."""

    daemon_threads = True
    request_queue_size = 256  # listen backlog: concurrent callers connect at once (the default 5 drops them)

    def __init__(self, address: tuple[str, int], chat: ChatHandler, models: Callable[[], list[str]],
                 admin: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] | None = None):
        super().__init__(address, _Handler)
        self.chat = chat
        self.models = models
        self.admin = admin or {}  # extra POST routes: path -> (JSON body -> JSON answer)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="openai-server", daemon=True)
        thread.start()
        return thread


class _Handler(BaseHTTPRequestHandler):
    server: OpenAIServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # request lines would drown the CLI's progress output

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send_json(200, {"status": "ok"})
        elif self.path == "/v1/models":
            self._send_json(200, wire.model_list([(name, "distillery") for name in self.server.models()]))
        else:
            self._send_json(404, wire.error(f"no route {self.path}", "not_found"))

    def do_POST(self) -> None:
        if self.path in self.server.admin:
            try:
                self._send_json(200, self.server.admin[self.path](self._read_json()))
            except wire.WireError as exc:
                self._send_json(exc.status, wire.error(str(exc), exc.code))
            except Exception as exc:  # noqa: BLE001 - the server must survive a failing request
                self._send_json(500, wire.error(f"internal error: {exc}", "server_error"))
            return
        try:
            if self.path != "/v1/chat/completions":
                raise wire.WireError(f"no route {self.path}", 404, "not_found")
            body = self._read_json()
            wire.chat_messages(body)
            done = self.server.chat(body)
        except wire.WireError as exc:
            self._send_json(exc.status, wire.error(str(exc), exc.code))
            return
        except Exception as exc:  # the server must survive a failing request
            self._send_json(500, wire.error(f"internal error: {exc}", "server_error"))
            return
        if body.get("stream"):
            self._send_stream(wire.chat_chunks([done.content] if done.content is not None else [], done.model,
                                               done.prompt_tokens, done.completion_tokens, done.finish_reason,
                                               usage_chunk=wire.wants_stream_usage(body), tool_calls=done.tool_calls))
        else:
            self._send_json(200, wire.chat_completion(done.content, done.model, done.prompt_tokens,
                                                      done.completion_tokens, done.finish_reason, done.tool_calls,
                                                      done.logprobs))

    def _read_json(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise wire.WireError(f"request body over {MAX_BODY_BYTES} bytes", 413)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise wire.WireError(f"request body is not valid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise wire.WireError("request body must be a JSON object")
        return body

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_stream(self, chunks: list[dict[str, Any]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        for chunk in chunks:
            self.wfile.write(wire.sse_event(chunk))
        self.wfile.write(wire.SSE_DONE)
        self.close_connection = True
