"""Capture for code that cannot change its base URL: wrap an ``openai.OpenAI`` client.

``capture(client, recorder, workload).chat.completions.create(...)`` behaves like the
client's own method and hands the exchange, successful or not, to the same ``Recorder``
the gateway uses: off the calling thread, batched, journaled while the store is down.
A provider error is recorded as a failed exchange and then re-raised unchanged.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Iterator

import openai

from distillery import wire
from distillery.capture.recorder import Recorder
from distillery.store import STATUS_ERROR, Exchange, exchange_values


class _Completions:
    def __init__(self, client: openai.OpenAI, recorder: Recorder, workload: str):
        self._client, self._recorder, self._workload = client, recorder, workload

    def _record(self, exchange: Exchange) -> None:
        exchange.uid = uuid.uuid4().hex
        self._recorder.submit(exchange_values(exchange))

    def create(self, **kwargs: Any) -> Any:
        messages = list(kwargs.get("messages", []))
        params = {k: v for k, v in kwargs.items() if k not in ("messages", "extra_headers", "timeout")}
        if kwargs.get("stream") and "stream_options" not in kwargs:
            # Ask for the usage chunk so streamed calls are costed like the others, as the gateway does.
            kwargs = {**kwargs, "stream_options": {"include_usage": True}}
        started = time.perf_counter()
        try:
            result = self._client.chat.completions.create(**kwargs)
        except openai.APIError as exc:
            self._record(Exchange(
                workload=self._workload, request_messages=messages, request_params=params,
                response_text=None, model=kwargs.get("model"), status=STATUS_ERROR,
                status_code=getattr(exc, "status_code", None), error=str(exc),
                latency_ms=(time.perf_counter() - started) * 1000,
            ))
            raise
        if kwargs.get("stream"):
            return self._record_stream(result, messages, params, started)
        self._record(_exchange(self._workload, messages, params, wire.answer_of(result.model_dump()), started))
        return result

    def _record_stream(self, stream: Any, messages: list, params: dict, started: float) -> Iterator[Any]:
        reader = wire.StreamReader()  # text, tool calls from their deltas, refusal, usage
        for chunk in stream:
            reader.take(chunk.model_dump())
            yield chunk
        self._record(_exchange(self._workload, messages, params, reader.answer, started))


def _exchange(workload: str, messages: list, params: dict, answer: wire.Answer, started: float) -> Exchange:
    usage = answer.usage or {}
    return Exchange(workload=workload, request_messages=messages, request_params=params, response_text=answer.text,
                    tool_calls=answer.tool_calls, refusal=answer.refusal, model=answer.model,
                    finish_reason=answer.finish_reason, prompt_tokens=usage.get("prompt_tokens"),
                    completion_tokens=usage.get("completion_tokens"), latency_ms=(time.perf_counter() - started) * 1000)


class _Chat:
    def __init__(self, completions: _Completions):
        self.completions = completions


class CapturingClient:
    """The wrapped client: ``chat.completions.create`` is recorded, the rest passes through."""

    def __init__(self, client: openai.OpenAI, recorder: Recorder, workload: str):
        self._client = client
        self.chat = _Chat(_Completions(client, recorder, workload))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def capture(client: openai.OpenAI, recorder: Recorder, workload: str) -> CapturingClient:
    return CapturingClient(client, recorder, workload)
