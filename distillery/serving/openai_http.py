"""A small OpenAI-compatible HTTP server base for the stand-in and the local model server.

Both serve ``POST /v1/chat/completions`` (plain and ``stream: true``), ``GET /v1/models``
and ``GET /healthz``. Malformed requests get OpenAI-style error objects with 400, unknown
paths 404, handler crashes 500; the server keeps running in each case.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

MAX_BODY_BYTES = 1 << 20


class RequestError(Exception):
    def __init__(self, status: int, message: str, code: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@dataclass
class Completion:
    content: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"


def error_body(message: str, code: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": code, "param": None, "code": code}}


def completion_body(completion: Completion) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": completion.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.content},
                "finish_reason": completion.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens,
        },
    }


def stream_chunks(completion: Completion) -> list[dict[str, Any]]:
    """The completion as chat.completion.chunk events: role, content, finish with usage."""
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": completion.model}
    usage = completion_body(completion)["usage"]
    return [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {"content": completion.content}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": completion.finish_reason}], "usage": usage},
    ]


def parse_chat_request(body: dict[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list")
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str) or "role" not in message:
            raise RequestError(400, "each message needs a 'role' and a string 'content'")
    return messages


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
            data = [{"id": name, "object": "model", "owned_by": "distillery"} for name in self.server.models()]
            self._send_json(200, {"object": "list", "data": data})
        else:
            self._send_json(404, error_body(f"no route {self.path}", "not_found"))

    def do_POST(self) -> None:
        if self.path in self.server.admin:
            try:
                self._send_json(200, self.server.admin[self.path](self._read_json()))
            except RequestError as exc:
                self._send_json(exc.status, error_body(exc.message, exc.code))
            except Exception as exc:  # noqa: BLE001 - the server must survive a failing request
                self._send_json(500, error_body(f"internal error: {exc}", "server_error"))
            return
        try:
            if self.path != "/v1/chat/completions":
                raise RequestError(404, f"no route {self.path}", "not_found")
            body = self._read_json()
            parse_chat_request(body)
            completion = self.server.chat(body)
        except RequestError as exc:
            self._send_json(exc.status, error_body(exc.message, exc.code))
            return
        except Exception as exc:  # the server must survive a failing request
            self._send_json(500, error_body(f"internal error: {exc}", "server_error"))
            return
        if body.get("stream"):
            self._send_stream(stream_chunks(completion))
        else:
            self._send_json(200, completion_body(completion))

    def _read_json(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise RequestError(413, f"request body over {MAX_BODY_BYTES} bytes")
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestError(400, f"request body is not valid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise RequestError(400, "request body must be a JSON object")
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
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.close_connection = True
