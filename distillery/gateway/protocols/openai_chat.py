"""OpenAI's chat completions (``POST /v1/chat/completions``) and legacy text completions (``POST /v1/completions``).

The small model speaks chat completions itself, so a chat call goes to it nearly as it came (the route's model and
decoding policy set; the caller's own output format, tools and stream settings dropped, as the policy replaces them)
and its answer goes back unchanged, unless the caller asked for a stream (then it is sent as chunks) or the answer is
a tool-call answer (then its calls go back as the message's ``tool_calls``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from distillery import wire
from distillery.tasks import ToolSpec, tool_spec

# What the small model's request leaves out of the caller's: the decoding policy replaces the output format and the
# tools; the gateway streams the small model's whole answer itself.
SMALL_MODEL_DROPS = frozenset(("response_format", "tools", "tool_choice", "parallel_tool_calls", "stream",
                               "stream_options", "functions", "function_call"))


@dataclass(frozen=True)
class OpenAICompletions:
    endpoint: str
    upstream_path: str
    small_model_may_answer: bool
    upstream_kind: str = "openai"

    def messages(self, body: dict[str, Any]) -> list:
        return wire.request_messages(body)

    def params(self, body: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in body.items() if k not in ("messages", "prompt")}

    def answer(self, payload: Any) -> wire.Answer:
        return wire.answer_of(payload)

    def stream_reader(self) -> wire.StreamReader:
        return wire.StreamReader()

    def upstream_body(self, body: dict[str, Any], raw: bytes) -> bytes:
        """Streams ask for the usage chunk, so streamed calls are costed like the others (the row keeps the caller's
        own params)."""
        if body.get("stream") and "stream_options" not in body:
            return orjson.dumps({**body, "stream_options": {"include_usage": True}})
        return raw

    def error(self, message: str, code: str) -> bytes:
        return wire.error_bytes(message, code)

    def tools(self, body: dict[str, Any]) -> ToolSpec | None:
        return tool_spec(body)

    def small_model_request(self, body: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in body.items() if k not in SMALL_MODEL_DROPS}

    def reply(self, answer: wire.Answer, raw: bytes | None, body: dict[str, Any]) -> bytes:
        """What the caller gets for the small model's answer (``raw``, already translated into ``answer``)."""
        tokens = answer.tokens
        if body.get("stream"):
            chunks = wire.chat_chunks([answer.text] if answer.text else [], answer.model, *tokens,
                                      finish_reason=answer.finish_reason or "stop",
                                      usage_chunk=wire.wants_stream_usage(body), tool_calls=answer.tool_calls)
            return b"".join(map(wire.sse_event, chunks)) + wire.SSE_DONE
        if answer.tool_calls:
            return orjson.dumps(wire.chat_completion(None, answer.model, *tokens, "tool_calls", answer.tool_calls))
        if raw is None:
            return orjson.dumps(wire.chat_completion(answer.text, answer.model, *tokens,
                                                     answer.finish_reason or "stop"))
        return raw


CHAT_COMPLETIONS = OpenAICompletions("chat.completions", "/chat/completions", small_model_may_answer=True)
COMPLETIONS = OpenAICompletions("completions", "/completions", small_model_may_answer=False)
