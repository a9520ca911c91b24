"""Anthropic's Messages API (``POST /v1/messages``, the ``anthropic`` SDK's ``client.messages.create``), streamed and
not, forwarded to an upstream of kind ``anthropic`` with its key in ``x-api-key`` and an ``anthropic-version``.

Into the exchange: ``system`` (text or text blocks) is the system message; a message whose content is text or text
blocks becomes text, other blocks (images, tool results) are kept as they came. Out of the answer: ``text`` blocks
are the text, ``tool_use`` blocks the tool calls (their ``input`` as JSON text, their id kept), ``stop_reason`` the
finish reason in chat terms (``max_tokens`` is ``length``, ``tool_use`` is ``tool_calls``, ``refusal`` is
``content_filter``) and ``usage`` its input and output tokens. A stream is put together from its events; it is
done at ``message_stop``. Errors are Anthropic's error objects, which the SDK turns into its exceptions by status.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import orjson

from distillery import wire
from distillery.tasks import ToolSpec, tool_spec

DEFAULT_VERSION = "2023-06-01"
_STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
                 "refusal": "content_filter", "pause_turn": "stop"}
_ANTHROPIC_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
# Anthropic's error types, by the gateway's own error codes
_ERROR_TYPES = {"invalid_api_key": "authentication_error", "permission_denied": "permission_error",
                "not_found": "not_found_error", "request_too_large": "request_too_large",
                "invalid_request_error": "invalid_request_error", "rate_limit_exceeded": "rate_limit_error",
                "upstream_timeout": "timeout_error"}


def _text_of(content: Any) -> Any:
    if isinstance(content, list) and all(isinstance(block, dict) and block.get("type") == "text"
                                         and isinstance(block.get("text"), str) for block in content):
        return "".join(block["text"] for block in content)
    return content


def request_messages(body: dict[str, Any]) -> list:
    system = _text_of(body.get("system"))
    messages: list = [{"role": "system", "content": system}] if isinstance(system, str) else []
    given = body.get("messages")
    if isinstance(given, list):
        messages += [{**message, "content": _text_of(message.get("content"))} if isinstance(message, dict) else message
                     for message in given]
    return messages


def answer_of(payload: Any) -> wire.Answer:
    try:
        if payload.get("type") != "message":
            raise KeyError("type")
        texts, calls = [], []
        for block in payload["content"]:
            if block.get("type") == "text":
                texts.append(block["text"])
            elif block.get("type") == "tool_use":
                calls.append({"id": block.get("id"), "type": "function",
                              "function": {"name": block["name"], "arguments": orjson.dumps(block["input"]).decode()}})
        usage = payload.get("usage") or {}
    except (KeyError, TypeError, AttributeError) as exc:
        raise wire.WireError(f"not a message: {type(exc).__name__}: {exc}") from exc
    return wire.Answer("".join(texts) if texts else None, calls or None, None,
                       _STOP_REASONS.get(payload.get("stop_reason"), payload.get("stop_reason")), payload.get("model"),
                       {"prompt_tokens": usage.get("input_tokens"), "completion_tokens": usage.get("output_tokens")})


class MessagesStreamReader(wire.EventReader):
    def __init__(self) -> None:
        super().__init__()
        self._blocks: dict[int, dict] = {}
        self._usage: dict[str, Any] = {}

    def take(self, payload: dict[str, Any]) -> None:
        kind, answer = payload.get("type"), self.answer
        if kind == "message_start" and isinstance(payload.get("message"), dict):
            answer.model = payload["message"].get("model")
            self._usage.update(payload["message"].get("usage") or {})
        elif kind == "content_block_start" and isinstance(payload.get("content_block"), dict):
            self._blocks[payload.get("index", 0)] = {**payload["content_block"], "partial_json": ""}
        elif kind == "content_block_delta" and isinstance(payload.get("delta"), dict):
            block, delta = self._blocks.get(payload.get("index", 0)), payload["delta"]
            if block is not None and delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
                block["text"] = block.get("text", "") + delta["text"]
            elif block is not None and delta.get("type") == "input_json_delta" \
                    and isinstance(delta.get("partial_json"), str):
                block["partial_json"] += delta["partial_json"]
        elif kind == "message_delta":
            stop = (payload.get("delta") or {}).get("stop_reason")
            answer.finish_reason = _STOP_REASONS.get(stop, stop) or answer.finish_reason
            self._usage.update(payload.get("usage") or {})
        elif kind == "message_stop":
            self.done = True
        else:
            return
        texts = [b["text"] for _, b in sorted(self._blocks.items()) if b.get("type") == "text" and "text" in b]
        answer.text = "".join(texts) if texts else None
        calls = [{"id": b.get("id"), "type": "function",
                  "function": {"name": b.get("name"), "arguments": b["partial_json"] or "{}"}}
                 for _, b in sorted(self._blocks.items()) if b.get("type") == "tool_use"]
        answer.tool_calls = calls or None
        answer.usage = {"prompt_tokens": self._usage.get("input_tokens"),
                        "completion_tokens": self._usage.get("output_tokens")}


def error(message: str, code: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": _ERROR_TYPES.get(code, "api_error"), "message": message}}


def message(text: str | None, model: str, prompt_tokens: int, completion_tokens: int,
            tool_calls: list | None = None, stop_reason: str | None = None) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text is not None else []
    content += [{"type": "tool_use", "id": call["id"] if str(call.get("id", "")).startswith("toolu_")
                 else f"toolu_{os.urandom(12).hex()}", "name": call["function"]["name"],
                 "input": orjson.loads(call["function"]["arguments"])} for call in tool_calls or ()]
    return {"id": f"msg_{os.urandom(12).hex()}", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop_reason or ("tool_use" if tool_calls else "end_turn"),
            "stop_sequence": None, "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens}}


def stream_events(whole: dict[str, Any]) -> list[dict[str, Any]]:
    """A message as the Messages API streams it: message_start, each block's start, delta and stop, message_delta
    with the stop reason and the output tokens, message_stop."""
    usage = whole["usage"]
    events: list[dict[str, Any]] = [{"type": "message_start", "message": {
        **whole, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}}]
    for index, block in enumerate(whole["content"]):
        if block["type"] == "text":
            events += [{"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
                       {"type": "content_block_delta", "index": index,
                        "delta": {"type": "text_delta", "text": block["text"]}}]
        else:
            events += [{"type": "content_block_start", "index": index, "content_block": {**block, "input": {}}},
                       {"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": orjson.dumps(block["input"]).decode()}}]
        events.append({"type": "content_block_stop", "index": index})
    events += [{"type": "message_delta", "delta": {"stop_reason": whole["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]}},
               {"type": "message_stop"}]
    return events


@dataclass(frozen=True)
class AnthropicMessages:
    endpoint: str = "messages"
    upstream_path: str = "/messages"
    small_model_may_answer: bool = True
    upstream_kind: str = "anthropic"

    def messages(self, body: dict[str, Any]) -> list:
        return request_messages(body)

    def params(self, body: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in body.items() if k not in ("messages", "system")}

    def answer(self, payload: Any) -> wire.Answer:
        return answer_of(payload)

    def stream_reader(self) -> MessagesStreamReader:
        return MessagesStreamReader()

    def upstream_body(self, body: dict[str, Any], raw: bytes) -> bytes:
        return raw  # a stream's message_start and message_delta carry the usage

    def error(self, message: str, code: str) -> bytes:
        return orjson.dumps(error(message, code))

    def tools(self, body: dict[str, Any]) -> ToolSpec | None:
        return tool_spec(body)

    def small_model_request(self, body: dict[str, Any]) -> dict[str, Any]:
        request: dict[str, Any] = {"messages": request_messages(body)}
        for name in ("max_tokens", "temperature", "top_p"):
            if body.get(name) is not None:
                request[name] = body[name]
        return request

    def reply(self, answer: wire.Answer, raw: bytes | None, body: dict[str, Any]) -> bytes:
        whole = message(answer.text, answer.model, *answer.tokens, answer.tool_calls,
                        _ANTHROPIC_STOP.get(answer.finish_reason or "stop", "end_turn"))
        return wire.typed_sse_events(stream_events(whole)) if body.get("stream") else orjson.dumps(whole)


MESSAGES = AnthropicMessages()
