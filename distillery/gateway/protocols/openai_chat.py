"""OpenAI's chat completions (``POST /v1/chat/completions``) and legacy text completions (``POST /v1/completions``).

The small model speaks chat completions itself, so a chat call goes to it nearly as it came (the route's model and
decoding policy set, ``response_format`` dropped) and its answer goes back to the caller unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from distillery import wire


@dataclass(frozen=True)
class OpenAICompletions:
    endpoint: str
    upstream_path: str
    small_model_may_answer: bool

    def messages(self, body: dict[str, Any]) -> list:
        return wire.request_messages(body)

    def params(self, body: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in body.items() if k not in ("messages", "prompt")}

    def answer(self, payload: Any) -> tuple[Any, str | None]:
        return wire.answer_of(payload)

    def stream_reader(self) -> wire.StreamReader:
        return wire.StreamReader()

    def error(self, message: str, code: str) -> bytes:
        return wire.error_bytes(message, code)

    def small_model_request(self, body: dict[str, Any]) -> dict[str, Any]:
        """The caller's request minus its own output format: the route's decoding policy replaces it."""
        return {k: v for k, v in body.items() if k != "response_format"}


CHAT_COMPLETIONS = OpenAICompletions("chat.completions", "/chat/completions", small_model_may_answer=True)
COMPLETIONS = OpenAICompletions("completions", "/completions", small_model_may_answer=False)
