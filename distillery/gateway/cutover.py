"""The cut-over at the gateway: who answers a call on a routed workload, and what happens when the small model fails.

A workload's route (``distillery.routing``) says how far its move to the small model has come:

- ``shadow``: the frontier answers; once the caller has that answer, the small model answers a copy (the watch);
- ``canary N%``: callers whose route key (the ``X-Distillery-Route-Key`` header, else the body's ``user``, else
  the call's own uid) hashes below N get the small model's answer; ``small``: every call does.

When the small model fails (connection, status, timeout) or answers something its route's decoding policy does
not allow, the caller gets the frontier's answer instead (a fallback, never an error). A route with a cascade
(``Route.cascade``) asks the small model for its tokens' log-probabilities and answers a call with it only when its
confidence reaches the threshold; below it the call is escalated: the frontier answers it the way it answers a
fallback, but it counts as neither an error nor invalid. Every protocol's calls, streamed or not, may go to the small
model (legacy text completions excepted): the protocol translates the call into a chat request and the small model's
answer back into the caller's shape (``protocols``), tool calls included.

``Cutover.serve`` is the one pass of a routed call: the small model when the route gives it the call, else (or when
it fails) the frontier, then the call as one event to the watch (``watch``), which does everything that need not
come before the caller's answer: counts, comparisons, the rollback window, the autopilot's evidence.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable

from distillery import wire
from distillery.gateway.http import Request, Responder
from distillery.gateway.metrics import GatewayMetrics
from distillery.gateway.protocols import WireProtocol
from distillery.gateway.rows import Rows
from distillery.gateway.small_model import SMALL_MODEL_FAILURES, SmallModel, as_tool_calls
from distillery.gateway.watch import ANSWERED, ESCALATED, FAILED, INVALID, AskFrontier, RoutedCall, Watch
from distillery.routing import ROUTE_KEY_HEADER, Route, takes_small_model
from distillery.store import SERVED_BY_SMALL
from distillery.tasks import confidence

# Answers the caller from the frontier; returns its answer, or None when the caller got an error instead.
AnswerFromFrontier = Callable[[], Awaitable[wire.Answer | None]]
_STREAM_HEADERS = [("cache-control", "no-cache")]


class Cutover:
    def __init__(self, small_model: SmallModel, watch: Watch, rows: Rows, metrics: GatewayMetrics):
        self._small_model = small_model
        self._watch = watch
        self._rows = rows
        self._metrics = metrics

    async def serve(self, route: Route, protocol: WireProtocol, request: Request, body: dict[str, Any], row: dict,
                    responder: Responder, started: float, frontier: AnswerFromFrontier,
                    ask_frontier: AskFrontier) -> None:
        """Answer a call on a routed workload. ``frontier`` answers the caller from the frontier; ``ask_frontier``
        answers a copy of the call from it later, for an audit."""
        call = RoutedCall(route, protocol, body, row, ask_frontier)
        try:
            if _small_model_takes(route, request, body, row) and await self._small_model_answers(call, responder,
                                                                                                started):
                return
            call.answer = await frontier()
        finally:
            self._watch.observe(call)

    async def _small_model_answers(self, call: RoutedCall, responder: Responder, started: float) -> bool:
        """Answer the caller with the small model; False (the frontier answers instead) when it fails in any way, or
        when a cascade route's small model is less sure of its answer than the threshold (the call is escalated).

        A streamed call is answered the same way: the small model's whole (short) answer is checked first, then sent
        as the protocol's stream, so a failed, invalid or escalated answer falls back before the caller has a byte."""
        route, protocol, body, row = call.route, call.protocol, call.body, call.row
        asked = time.perf_counter()
        policy, request = self._small_model.request(route, protocol, body, row)
        try:
            data, answer, token_logprobs = await self._small_model.ask(route, request)
        except SMALL_MODEL_FAILURES as exc:
            call.small, call.small_latency_ms = FAILED, (time.perf_counter() - asked) * 1000
            _mark(row, "distillery_fallback", f"{type(exc).__name__}: {exc}")
            return False
        call.small_latency_ms = (time.perf_counter() - asked) * 1000
        if not policy.valid_answer(answer.text, request.get("messages")):
            call.small = INVALID
            _mark(row, "distillery_fallback", f"invalid answer: {answer.text[:200]}")
            return False
        cascade = route.cascade
        if cascade:
            row["confidence"] = confidence(cascade.measure, token_logprobs) if token_logprobs else None
            if row["confidence"] is None or row["confidence"] < cascade.threshold:
                # Not sure enough: the frontier answers (not an error, not invalid); the row keeps the small model's
                # confidence and answer.
                call.small = ESCALATED
                sure = "no confidence" if row["confidence"] is None else f"confidence {row['confidence']:.4g}"
                _mark(row, "distillery_escalated", {"reason": f"{sure} < threshold {cascade.threshold:.4g}",
                                                    "small_answer": answer.text[:2000]})
                return False
        call.small, call.small_text = ANSWERED, answer.text
        if policy.tool_calls:
            answer = as_tool_calls(answer)
        row.update(upstream="small-model", served_by=SERVED_BY_SMALL)
        self._rows.ok(row, started, answer)
        if cascade and not body.get("logprobs"):
            data = None  # the log-probabilities the cascade asked for are not the caller's
        if body.get("stream"):
            responder.send(200, protocol.reply(answer, data, body), "text/event-stream", extra=_STREAM_HEADERS)
        else:
            responder.send(200, protocol.reply(answer, data, body))
        self._metrics.count(protocol.endpoint, 200, seconds=time.perf_counter() - started)
        return True


def _small_model_takes(route: Route, request: Request, body: dict[str, Any], row: dict) -> bool:
    """Whether the small model answers this call: a canary keeps one caller on one side by its route key."""
    key = request.headers.get(ROUTE_KEY_HEADER) or body.get("user")
    return takes_small_model(route, key if isinstance(key, str) and key else row["uid"])


def _mark(row: dict, name: str, value: Any) -> None:
    """Say in the call's row why the frontier answered it (before the row is recorded with the frontier's answer)."""
    row["request_params"] = {**row["request_params"], name: value}
