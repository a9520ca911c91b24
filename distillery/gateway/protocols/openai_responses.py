"""OpenAI's Responses API (``POST /v1/responses``, the SDK's ``client.responses.create``), streamed and not.

Into the exchange: ``instructions`` is the system message, ``input`` (text, or a list of messages whose contents
are text or text parts) the rest; output ``message`` items give the text and the refusal, ``function_call`` items
the tool calls (``call_id`` as their id), ``status`` the finish reason (``incomplete`` for ``max_output_tokens`` is
``length``) and ``usage`` its input and output tokens. A stream is read from its text deltas and its closing
``response.completed`` (or ``.incomplete``, ``.failed``) event, which carries the whole response. The builders
here (``response``, ``stream_events``) answer a caller for the small model, and serve the tests' stub provider;
``tests/test_wire.py`` validates them against the ``openai`` package's published types.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import orjson

from distillery import wire
from distillery.tasks import ToolSpec, tool_spec

_FINISHED = frozenset(("response.completed", "response.incomplete", "response.failed"))


def _text_of(content: Any) -> Any:
    """An input message's content as text when it is text or text parts; as it came otherwise."""
    if isinstance(content, list) and all(isinstance(part, dict) and isinstance(part.get("text"), str)
                                         for part in content):
        return "".join(part["text"] for part in content)
    return content


def request_messages(body: dict[str, Any]) -> list:
    messages: list = []
    if isinstance(body.get("instructions"), str):
        messages.append({"role": "system", "content": body["instructions"]})
    given = body.get("input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    elif isinstance(given, list):
        messages += [{"role": item["role"], "content": _text_of(item.get("content"))}
                     if isinstance(item, dict) and "role" in item else item for item in given]
    return messages


def answer_of(payload: Any) -> wire.Answer:
    """The exchange's answer of a response object; WireError when ``payload`` is not one."""
    try:
        output = payload["output"]
        texts, refusals, calls = [], [], []
        for item in output:
            if item.get("type") == "message":
                for part in item.get("content") or ():
                    if part.get("type") == "output_text":
                        texts.append(part["text"])
                    elif part.get("type") == "refusal":
                        refusals.append(part["refusal"])
            elif item.get("type") == "function_call":
                calls.append({"id": item.get("call_id"), "type": "function",
                              "function": {"name": item["name"], "arguments": item["arguments"]}})
        usage = payload.get("usage") or {}
        status = payload.get("status")
    except (KeyError, TypeError, AttributeError) as exc:
        raise wire.WireError(f"not a response: {type(exc).__name__}: {exc}") from exc
    if status == "incomplete":
        reason = (payload.get("incomplete_details") or {}).get("reason")
        finish = "length" if reason == "max_output_tokens" else "content_filter"
    else:
        finish = "tool_calls" if calls else "stop" if status == "completed" else status
    return wire.Answer("".join(texts) if texts else None, calls or None, "".join(refusals) if refusals else None,
                       finish, payload.get("model"),
                       {"prompt_tokens": usage.get("input_tokens"), "completion_tokens": usage.get("output_tokens")})


class ResponsesStreamReader(wire.EventReader):
    def __init__(self) -> None:
        super().__init__()
        self._parts: list[str] = []

    def take(self, payload: dict[str, Any]) -> None:
        kind = payload.get("type")
        if kind == "response.output_text.delta" and isinstance(payload.get("delta"), str):
            self._parts.append(payload["delta"])
            self.answer.text = "".join(self._parts)
        elif kind in _FINISHED and isinstance(payload.get("response"), dict):
            try:
                self.answer = answer_of(payload["response"])
            except wire.WireError:
                pass
            self.done = True


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {"input_tokens": prompt_tokens, "output_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}


def _id(prefix: str) -> str:
    return f"{prefix}_{os.urandom(12).hex()}"


def output_items(text: str | None, tool_calls: list | None) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if text is not None:
        items.append({"type": "message", "id": _id("msg"), "status": "completed", "role": "assistant",
                      "content": [{"type": "output_text", "text": text, "annotations": []}]})
    for call in tool_calls or ():
        items.append({"type": "function_call", "id": _id("fc"), "call_id": call["id"], "status": "completed",
                      "name": call["function"]["name"], "arguments": call["function"]["arguments"]})
    return items


def response(text: str | None, model: str, prompt_tokens: int, completion_tokens: int,
             tool_calls: list | None = None, request: dict[str, Any] | None = None) -> dict[str, Any]:
    request = request or {}
    return {"id": _id("resp"), "object": "response", "created_at": int(time.time()), "status": "completed",
            "model": model, "output": output_items(text, tool_calls), "error": None, "incomplete_details": None,
            "instructions": request.get("instructions"), "metadata": request.get("metadata") or {},
            "parallel_tool_calls": request.get("parallel_tool_calls", True),
            "tool_choice": request.get("tool_choice", "auto"), "tools": request.get("tools", []),
            "temperature": request.get("temperature"), "top_p": request.get("top_p"),
            "usage": _usage(prompt_tokens, completion_tokens)}


def stream_events(whole: dict[str, Any]) -> list[dict[str, Any]]:
    """A response as the Responses API streams it: created, each output item added, its text deltas or its
    arguments, done, then completed with the whole response."""
    events: list[dict[str, Any]] = [{"type": "response.created",
                                     "response": {**whole, "status": "in_progress", "output": [], "usage": None}}]
    for index, item in enumerate(whole["output"]):
        if item["type"] == "message":
            events.append({"type": "response.output_item.added", "output_index": index,
                           "item": {**item, "status": "in_progress", "content": []}})
            for part_index, part in enumerate(item["content"]):
                where = {"item_id": item["id"], "output_index": index, "content_index": part_index}
                events += [{"type": "response.content_part.added", **where, "part": {**part, "text": ""}},
                           {"type": "response.output_text.delta", **where, "delta": part["text"], "logprobs": []},
                           {"type": "response.output_text.done", **where, "text": part["text"], "logprobs": []},
                           {"type": "response.content_part.done", **where, "part": part}]
        else:
            events += [{"type": "response.output_item.added", "output_index": index,
                        "item": {**item, "status": "in_progress", "arguments": ""}},
                       {"type": "response.function_call_arguments.delta", "item_id": item["id"],
                        "output_index": index, "delta": item["arguments"]},
                       {"type": "response.function_call_arguments.done", "item_id": item["id"],
                        "output_index": index, "arguments": item["arguments"], "name": item["name"]}]
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})
    events.append({"type": "response.completed", "response": whole})
    return [{**event, "sequence_number": n} for n, event in enumerate(events)]


@dataclass(frozen=True)
class OpenAIResponses:
    endpoint: str = "responses"
    upstream_path: str = "/responses"
    small_model_may_answer: bool = True
    upstream_kind: str = "openai"

    def messages(self, body: dict[str, Any]) -> list:
        return request_messages(body)

    def params(self, body: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in body.items() if k not in ("input", "instructions")}

    def answer(self, payload: Any) -> wire.Answer:
        return answer_of(payload)

    def stream_reader(self) -> ResponsesStreamReader:
        return ResponsesStreamReader()

    def upstream_body(self, body: dict[str, Any], raw: bytes) -> bytes:
        return raw  # a stream's last event carries the usage

    def error(self, message: str, code: str) -> bytes:
        return wire.error_bytes(message, code)

    def tools(self, body: dict[str, Any]) -> ToolSpec | None:
        return tool_spec(body)

    def small_model_request(self, body: dict[str, Any]) -> dict[str, Any]:
        request = {"messages": request_messages(body)}
        if body.get("max_output_tokens") is not None:
            request["max_tokens"] = body["max_output_tokens"]
        return request

    def reply(self, answer: wire.Answer, raw: bytes | None, body: dict[str, Any]) -> bytes:
        whole = response(answer.text, answer.model, *answer.tokens, answer.tool_calls, body)
        return wire.typed_sse_events(stream_events(whole)) if body.get("stream") else orjson.dumps(whole)


RESPONSES = OpenAIResponses()
