"""The wire protocols the gateway speaks, one module each.

A protocol turns a caller's request into the gateway's one exchange row (what was asked, with which
parameters), reads the provider's answer and stream back into it (the text, the finish reason), says its
errors in its own shape, and, where the small model may answer its calls, translates between the caller's
request and answer and the small model's OpenAI chat completion. Everything else (keys, workloads, routes,
recording, metrics) is the same for every protocol and lives in the gateway around it.
"""

from __future__ import annotations

from typing import Any, Protocol

from distillery.gateway.protocols.openai_chat import CHAT_COMPLETIONS, COMPLETIONS


class WireProtocol(Protocol):
    endpoint: str  # the log row's ``endpoint``, and the metrics' label
    upstream_path: str  # where the provider takes it, under the upstream's base URL
    small_model_may_answer: bool  # calls the cut-over may send to the small model (never streamed ones)

    def messages(self, body: dict[str, Any]) -> list: ...

    def params(self, body: dict[str, Any]) -> dict[str, Any]: ...

    def answer(self, payload: Any) -> tuple[Any, str | None]: ...

    def stream_reader(self) -> Any: ...

    def error(self, message: str, code: str) -> bytes: ...

    def small_model_request(self, body: dict[str, Any]) -> dict[str, Any]: ...


__all__ = ["WireProtocol", "CHAT_COMPLETIONS", "COMPLETIONS"]
