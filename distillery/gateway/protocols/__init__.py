"""The wire protocols the gateway speaks, one module each: OpenAI's chat (and text) completions, OpenAI's Responses
API and Anthropic's Messages API.

A protocol turns a caller's request into the gateway's one exchange row (what was asked, with which parameters),
reads the provider's answer and stream back into one ``wire.Answer`` (text, tool calls, refusal, finish reason,
usage), says its errors in its own shape, and translates between the caller's request and answer and the small
model's OpenAI chat completion, so the caller cannot tell which model answered. Everything else (keys, workloads,
routes, recording, metrics) is the same for every protocol and lives in the gateway around it.
"""

from __future__ import annotations

from typing import Any, Protocol

from distillery import wire
from distillery.gateway.protocols.anthropic_messages import MESSAGES
from distillery.gateway.protocols.openai_chat import CHAT_COMPLETIONS, COMPLETIONS
from distillery.gateway.protocols.openai_responses import RESPONSES
from distillery.tasks import ToolSpec


class WireProtocol(Protocol):
    endpoint: str  # the log row's ``endpoint``, and the metrics' label
    upstream_path: str  # where the provider takes it, under the upstream's base URL
    upstream_kind: str  # the kind of upstream that takes it: openai or anthropic
    small_model_may_answer: bool  # calls the cut-over may send to the small model

    def messages(self, body: dict[str, Any]) -> list: ...

    def params(self, body: dict[str, Any]) -> dict[str, Any]: ...

    def answer(self, payload: Any) -> wire.Answer: ...

    def stream_reader(self) -> wire.EventReader: ...

    def upstream_body(self, body: dict[str, Any], raw: bytes) -> bytes: ...

    def error(self, message: str, code: str) -> bytes: ...

    def tools(self, body: dict[str, Any]) -> ToolSpec | None: ...

    def small_model_request(self, body: dict[str, Any]) -> dict[str, Any]: ...

    # ``answer`` is the small model's (its text None where its tool calls stand instead), ``raw`` its chat completion
    # as the server sent it, or None when it must not reach the caller as it is (it carries what the caller did not
    # ask for: a cascade's log-probabilities)
    def reply(self, answer: wire.Answer, raw: bytes | None, body: dict[str, Any]) -> bytes: ...


__all__ = ["WireProtocol", "CHAT_COMPLETIONS", "COMPLETIONS", "RESPONSES", "MESSAGES"]
