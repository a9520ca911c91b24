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
from dataclasses import dataclass
from typing import Any

import orjson

CHAT_COMPLETION = "chat.completion"
CHAT_COMPLETION_CHUNK = "chat.completion.chunk"
TEXT_COMPLETION = "text_completion"
SSE_DONE = b"data: [DONE]\n\n"
# How a small model's server is asked (a route's ``small_api``, an endpoint's ``api``): OpenAI chat completions, or
# vLLM's classify route (a classifier student vLLM serves as a pooling model, which does not speak chat).
CHAT_API, CLASSIFY_API = "chat", "classify"
SMALL_MODEL_APIS = (CHAT_API, CLASSIFY_API)


@dataclass(slots=True)
class Answer:
    """What a model answered, whatever the protocol: the gateway's one exchange. ``tool_calls`` are in chat
    completions' shape (``[{"id", "type": "function", "function": {"name", "arguments"}}]``, arguments as text),
    ``finish_reason`` in its terms (``stop``, ``length``, ``tool_calls``, ``content_filter``) and ``usage`` has
    ``prompt_tokens`` and ``completion_tokens``."""

    text: Any = None
    tool_calls: list | None = None
    refusal: str | None = None
    finish_reason: str | None = None
    model: str | None = None
    usage: dict | None = None

    @property
    def tokens(self) -> tuple[int, int]:
        """Prompt and completion tokens, 0 where the usage did not say."""
        usage = self.usage or {}
        return usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0


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


def chat_completion(content: str | None, model: str, prompt_tokens: int, completion_tokens: int,
                    finish_reason: str = "stop", tool_calls: list | None = None,
                    logprobs: list[dict] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    choice = {"index": 0, "message": message, "finish_reason": finish_reason,
              "logprobs": None if logprobs is None else {"content": logprobs, "refusal": None}}
    return {"id": _id("chatcmpl"), "object": CHAT_COMPLETION, "created": int(time.time()),
            "model": model, "choices": [choice], "usage": usage(prompt_tokens, completion_tokens)}


def token_logprob(token: str, logprob: float) -> dict[str, Any]:
    """One chosen token's entry in a chat completion's ``logprobs.content``."""
    return {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": []}


def token_logprobs_of(payload: Any) -> list[float] | None:
    """The first choice's chosen-token log-probabilities (``logprobs.content``), None when it has none."""
    try:
        content = payload["choices"][0]["logprobs"]["content"]
        return [float(entry["logprob"]) for entry in content] if content else None
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def tool_call(name: str, arguments: str) -> dict[str, Any]:
    """One function call, as a chat completion's message lists it (the id is new)."""
    return {"id": f"call_{os.urandom(12).hex()}", "type": "function", "function": {"name": name, "arguments": arguments}}


def text_completion(text: str, model: str, prompt_tokens: int, completion_tokens: int,
                    finish_reason: str = "stop") -> dict[str, Any]:
    return {"id": _id("cmpl"), "object": TEXT_COMPLETION, "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}],
            "usage": usage(prompt_tokens, completion_tokens)}


def answer_of(payload: Any) -> Answer:
    """The first choice's answer (a chat message's ``content``, ``tool_calls`` and ``refusal``, a text completion's
    ``text``); WireError when ``payload`` is not a completion."""
    try:
        choice = payload["choices"][0]
        message = choice.get("message") or {}
        return Answer(message.get("content", choice.get("text")), message.get("tool_calls") or None,
                      message.get("refusal"), choice.get("finish_reason"), payload.get("model"), payload.get("usage"))
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise WireError(f"not a completion: {type(exc).__name__}: {exc}") from exc


def model_list(models: list[tuple[str, str]], created: int = 0) -> dict[str, Any]:
    """``/v1/models``: each (model, its owner), ``created`` as a Unix time (0: unknown)."""
    return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": owned_by}
                                       for name, owned_by in models]}


# vLLM's classify route (a route whose ``small_api`` is ``CLASSIFY_API``)

def classify_base_url(openai_base_url: str) -> str:
    """vLLM serves ``/classify`` at the server's root, beside its OpenAI API under ``/v1``."""
    return openai_base_url.rstrip("/").removesuffix("/v1")


def classify_request(model: str, text: str) -> dict[str, Any]:
    """A classify request for ``text``, cut to the server's ``--max-model-len`` (``truncate_prompt_tokens`` -1)."""
    return {"model": model, "input": text, "truncate_prompt_tokens": -1}


def classification_of(payload: Any) -> tuple[str, float]:
    """A classify answer's (``data[0]``: ``label``, ``probs``) most probable label and its probability; WireError
    when ``payload`` is not one."""
    try:
        result = payload["data"][0]
        label, probability = result["label"], max(result["probs"])
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise WireError(f"not a classify answer: {type(exc).__name__}: {exc}") from exc
    if not isinstance(label, str) or not 0 < probability <= 1:
        raise WireError(f"not a label with its probability: {str(result)[:200]}")
    return label, probability


# Streams

def chat_chunks(parts: list[str], model: str, prompt_tokens: int, completion_tokens: int,
                finish_reason: str = "stop", usage_chunk: bool = True,
                tool_calls: list | None = None) -> list[dict[str, Any]]:
    """A streamed chat completion: the role, one chunk per part of the text, each function call in two deltas (its
    name, then its arguments, as OpenAI streams them), the finish reason, and (as OpenAI sends it with
    ``stream_options.include_usage``) a last chunk with no choices and the usage."""
    base = {"id": _id("chatcmpl"), "object": CHAT_COMPLETION_CHUNK, "created": int(time.time()),
            "model": model}
    calls = []
    for index, call in enumerate(tool_calls or ()):
        calls += [({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                    "function": {"name": call["function"]["name"], "arguments": ""}}]}, None),
                  ({"tool_calls": [{"index": index, "function": {"arguments": call["function"]["arguments"]}}]}, None)]
    deltas = [({"role": "assistant", "content": None if tool_calls else ""}, None),
              *(({"content": part}, None) for part in parts), *calls, ({}, finish_reason)]
    chunks = [{**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]} for delta, finish in deltas]
    if usage_chunk:
        chunks.append({**base, "choices": [], "usage": usage(prompt_tokens, completion_tokens)})
    return chunks


def sse_event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def typed_sse_events(events: list[dict[str, Any]]) -> bytes:
    """Events as the Responses API and Anthropic's Messages API stream them: each named by its ``type``."""
    return b"".join(b"event: %b\ndata: %b\n\n" % (event["type"].encode(), orjson.dumps(event)) for event in events)


class EventReader:
    """Reads a server-sent-event stream as it passes, whatever the chunk boundaries, handing each event's JSON data
    to ``take``; ``answer`` is what the stream said so far and ``done`` is set once the stream's last event came."""

    def __init__(self) -> None:
        self.answer = Answer()
        self.done = False
        self._buffer = b""

    def feed(self, data: bytes) -> None:
        self._buffer += data
        *events, self._buffer = self._buffer.split(b"\n\n")
        for event in events:
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    self._data(line[5:].strip())

    def _data(self, data: bytes) -> None:
        if data == b"[DONE]":
            self.done = True
            return
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if isinstance(payload, dict):
            self.take(payload)

    def take(self, payload: dict[str, Any]) -> None:
        raise NotImplementedError


class StreamReader(EventReader):
    """A stream of chat (or text) completion chunks: the text, the function calls put together from their deltas,
    the refusal, the model, the finish reason and the usage; done at ``[DONE]``."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[str] = []
        self._refusal: list[str] = []
        self._calls: dict[int, dict] = {}

    def take(self, payload: dict[str, Any]) -> None:
        answer = self.answer
        answer.model = payload.get("model") or answer.model
        answer.usage = payload.get("usage") or answer.usage
        choices = payload.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                content = delta.get("content")
                if delta.get("tool_calls"):
                    self._call_deltas(delta["tool_calls"])
                if isinstance(delta.get("refusal"), str):
                    self._refusal.append(delta["refusal"])
                    answer.refusal = "".join(self._refusal)
            else:
                content = choice.get("text")
            if isinstance(content, str):
                self._parts.append(content)
                answer.text = "".join(self._parts)
            answer.finish_reason = choice.get("finish_reason") or answer.finish_reason

    def _call_deltas(self, deltas: Any) -> None:
        for delta in deltas if isinstance(deltas, list) else ():
            if not isinstance(delta, dict) or not isinstance(delta.get("index", 0), int):
                continue
            call = self._calls.get(delta.get("index", 0))
            if call is None:
                call = self._calls[delta.get("index", 0)] = {"id": delta.get("id"), "type": "function",
                                                             "function": {"name": "", "arguments": ""}}
                self.answer.tool_calls = [self._calls[i] for i in sorted(self._calls)]
            function = delta.get("function")
            if isinstance(function, dict):
                for field in ("name", "arguments"):
                    if isinstance(function.get(field), str):
                        call["function"][field] += function[field]
