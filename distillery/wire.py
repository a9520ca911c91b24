"""The OpenAI wire format in one place: requests, answers, stream chunks and errors.

The gateway, the local model server, the frontier stand-in and the tests' stub provider read and write these
shapes only through this module. They are the shapes of the ``openai`` package's published types
(``openai.types.chat.ChatCompletion``, ``ChatCompletionChunk``, ``openai.types.Completion``, ``Model``), and
``tests/test_wire.py`` validates every builder here against those types. The builders return plain dicts rather
than the pydantic models themselves because the gateway and the stub build one per call: a ``ChatCompletion``
model costs ~20 µs to build and dump, more than the gateway's own work on a call (benchmarks/gateway.py).

Errors are OpenAI error objects, ``{"error": {"message", "type", "param", "code"}}``, which the ``openai`` client
turns into its exception classes by status (``openai.BadRequestError`` for 400, ...), with ``code`` and ``message``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import orjson

CHAT_COMPLETION = "chat.completion"
CHAT_COMPLETION_CHUNK = "chat.completion.chunk"
TEXT_COMPLETION = "text_completion"
SSE_DONE = b"data: [DONE]\n\n"


class WireError(ValueError):
    """A request the OpenAI API would refuse: answered with ``status`` and an error object."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.code = status, code


def _id(prefix: str) -> str:
    return f"{prefix}-{os.urandom(12).hex()}"


# Errors

def error(message: str, code: str, param: str | None = None) -> dict[str, Any]:
    """An OpenAI error object. ``code`` doubles as its ``type``, so a caller can branch on either."""
    return {"error": {"message": message, "type": code, "param": param, "code": code}}


def error_bytes(message: str, code: str) -> bytes:
    return orjson.dumps(error(message, code))


def error_message(data: bytes) -> str | None:
    """The message of an OpenAI error object, None when ``data`` is not one."""
    try:
        message = orjson.loads(data)["error"]["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return message if isinstance(message, str) else None


# Requests

def chat_messages(body: dict[str, Any]) -> list[dict[str, str]]:
    """The messages of a chat request whose contents are all text, the form the local model server answers."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise WireError("'messages' must be a non-empty list")
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str) or "role" not in message:
            raise WireError("each message needs a 'role' and a string 'content'")
    return messages


def request_messages(body: dict[str, Any]) -> list:
    """What was asked, as chat messages: a chat request's ``messages``, a text completion's ``prompt`` as one user
    message."""
    return body.get("messages") or [{"role": "user", "content": str(body.get("prompt", ""))}]


def wants_stream_usage(body: dict[str, Any]) -> bool:
    """Whether a streamed call asked for the usage chunk at its end (``stream_options.include_usage``)."""
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def max_tokens(body: dict[str, Any], default: int) -> Any:
    """``max_completion_tokens`` (the current name), else ``max_tokens``, else ``default``; not validated."""
    return next((body[k] for k in ("max_completion_tokens", "max_tokens") if body.get(k) is not None), default)


# Answers

def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_completion(content: str, model: str, prompt_tokens: int, completion_tokens: int,
                    finish_reason: str = "stop") -> dict[str, Any]:
    return {"id": _id("chatcmpl"), "object": CHAT_COMPLETION, "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": finish_reason}],
            "usage": usage(prompt_tokens, completion_tokens)}


def text_completion(text: str, model: str, prompt_tokens: int, completion_tokens: int,
                    finish_reason: str = "stop") -> dict[str, Any]:
    return {"id": _id("cmpl"), "object": TEXT_COMPLETION, "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}],
            "usage": usage(prompt_tokens, completion_tokens)}


def answer_of(payload: Any) -> tuple[Any, str | None]:
    """The first choice's text (a chat message's ``content``, a text completion's ``text``) and finish reason;
    WireError when ``payload`` is not a completion."""
    try:
        choice = payload["choices"][0]
        message = choice.get("message") or {}
        return message.get("content", choice.get("text")), choice.get("finish_reason")
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise WireError(f"not a completion: {type(exc).__name__}: {exc}") from exc


def model_list(names: list[str], owned_by: str) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": owned_by}
                                       for name in names]}


# Streams

def chat_chunks(parts: list[str], model: str, prompt_tokens: int, completion_tokens: int,
                finish_reason: str = "stop", usage_chunk: bool = True) -> list[dict[str, Any]]:
    """A streamed chat completion: the role, one chunk per part of the text, the finish reason, and (as OpenAI
    sends it with ``stream_options.include_usage``) a last chunk with no choices and the usage."""
    base = {"id": _id("chatcmpl"), "object": CHAT_COMPLETION_CHUNK, "created": int(time.time()),
            "model": model}
    deltas = [({"role": "assistant", "content": ""}, None), *(({"content": part}, None) for part in parts),
              ({}, finish_reason)]
    chunks = [{**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]} for delta, finish in deltas]
    if usage_chunk:
        chunks.append({**base, "choices": [], "usage": usage(prompt_tokens, completion_tokens)})
    return chunks


def sse_event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class StreamReader:
    """Reads a server-sent-event stream of completion chunks as it passes, whatever the chunk boundaries: the
    text so far, the model, the finish reason and the usage; ``done`` once the ``[DONE]`` event has come."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.model: str | None = None
        self.finish_reason: str | None = None
        self.usage: dict | None = None
        self.done = False
        self._buffer = b""

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def feed(self, data: bytes) -> None:
        self._buffer += data
        *events, self._buffer = self._buffer.split(b"\n\n")
        for event in events:
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    self._take(line[5:].strip())

    def _take(self, data: bytes) -> None:
        if data == b"[DONE]":
            self.done = True
            return
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(payload, dict):
            return
        self.model = payload.get("model") or self.model
        self.usage = payload.get("usage") or self.usage
        choices = payload.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            content = delta.get("content") if isinstance(delta, dict) else None
            content = choice.get("text") if content is None else content
            if isinstance(content, str):
                self.parts.append(content)
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
