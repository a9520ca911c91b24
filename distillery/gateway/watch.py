"""What the gateway does after a routed call's caller has its answer: one event per call (``RoutedCall``), fed to
``Watch.observe`` once.

From it the watch
- counts the call (served by the small model or the frontier, fallbacks, escalations, covered calls);
- feeds the workload's rollback window (``routing.RolloutMonitor``) and, when a threshold is crossed, steps the route
  back (``RouteTable.step_back``: at once in this process, then in the database, so every gateway follows within
  ``route_refresh_s``);
- compares, off the caller's path: on a shadow route the small model answers a copy of the call; so too on a canary
  route whose autopilot is on, for the calls the small model did not take; ``audit_percent`` of the calls the small
  model answered alone on a cascade or autopilot route are also answered by the frontier. Each comparison is recorded
  (``served_by`` shadow or audit), feeds the window, and, on an autopilot route, is evidence for its stage
  (``RouteTable.compared``).

On JSON routes each small-model answer's share of values the request does not support
(``grounding.unsupported_values``) is in the window too.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from distillery import wire
from distillery.gateway.config import GatewayConfig
from distillery.gateway.metrics import GatewayMetrics
from distillery.gateway.protocols import WireProtocol
from distillery.gateway.rows import Rows, new_uid
from distillery.gateway.small_model import SMALL_MODEL_FAILURES, SmallModel, as_tool_calls
from distillery.grounding import message_text, unsupported_values
from distillery.routing import CANARY, SHADOW, RolloutMonitor, Route, RouteTable
from distillery.store import SERVED_BY_AUDIT, SERVED_BY_FRONTIER, SERVED_BY_SHADOW, SERVED_BY_SMALL
from distillery.tasks import agrees, confidence, parse_record, tool_call_answer

# Answers a copy of the current call from the frontier: (the upstream's name, its answer). Raises on any failure.
AskFrontier = Callable[[], Awaitable[tuple[str, wire.Answer]]]
# What became of the small model's try at answering a caller.
FAILED, INVALID, ESCALATED, ANSWERED = "failed", "invalid", "escalated", "answered"
_CHECK_INTERVAL_S = 0.1  # with a large window, a breach is found at most this late
_JUDGE_EVERY_CALL_BELOW = 500  # calls in the window


@dataclass(slots=True)
class RoutedCall:
    """One call on a routed workload, filled in by the cut-over as it is answered."""

    route: Route
    protocol: WireProtocol
    body: dict[str, Any]
    row: dict
    ask_frontier: AskFrontier
    small: str | None = None  # FAILED, INVALID, ESCALATED or ANSWERED; None: the small model was not asked
    small_latency_ms: float = 0.0
    small_text: str | None = None  # what the small model answered (ANSWERED)
    answer: wire.Answer | None = None  # the frontier's answer to the caller; None: it answered none (failed, cut off)


class Watch:
    def __init__(self, routes: RouteTable, small_model: SmallModel, config: GatewayConfig, rows: Rows,
                 metrics: GatewayMetrics):
        self.routes = routes
        self._small_model = small_model
        self._config = config
        self._rows = rows
        self._metrics = metrics
        self._monitors: dict[str, RolloutMonitor] = {}
        self._next_check: dict[str, float] = {}  # per workload: when its monitor's window is judged again
        self._comparisons: set[asyncio.Task] = set()  # shadow and audit calls in flight
        self._audit_share = config.audit_percent / 100

    def observe(self, call: RoutedCall) -> None:
        route, workload, metrics = call.route, call.route.workload, self._metrics
        if call.small == ANSWERED:
            metrics.served[workload, SERVED_BY_SMALL] += 1
            if route.cascade:
                metrics.covered[workload] += 1
            self._judge(route, latency_ms=call.small_latency_ms, unsupported=_unsupported_share(route, call.row,
                                                                                                call.small_text),
                        covered=True if route.cascade else None)
            if (route.cascade or route.autopilot) and self._audit_share and random.random() < self._audit_share:
                self._background(self._audit(call))
            return
        if call.small == FAILED:
            metrics.fallbacks[workload] += 1
            self._judge(route, ok=False, latency_ms=call.small_latency_ms)
        elif call.small == INVALID:
            metrics.fallbacks[workload] += 1
            self._judge(route, latency_ms=call.small_latency_ms, valid=False)
        elif call.small == ESCALATED:
            metrics.escalated[workload] += 1
            self._judge(route, latency_ms=call.small_latency_ms, covered=False)
        if call.answer is None:
            return
        metrics.served[workload, SERVED_BY_FRONTIER] += 1
        # A canary whose autopilot is on compares the calls the small model did not take too: its evidence comes at
        # the stage's whole traffic, not only from audits.
        if route.mode == SHADOW or (route.autopilot and route.mode == CANARY and call.small is None):
            reference = tool_call_answer(call.answer.tool_calls) if route.policy.tool_calls else call.answer.text
            if isinstance(reference, str):
                self._background(self._shadow(call, reference))

    async def finish(self, timeout_s: float = 10) -> None:
        """Let shadow and audit calls still in flight end (and be recorded)."""
        if self._comparisons:
            await asyncio.wait(set(self._comparisons), timeout=timeout_s)

    def _background(self, work) -> None:
        task = asyncio.create_task(work)
        self._comparisons.add(task)  # a reference, so the task is not collected mid-flight
        task.add_done_callback(self._comparisons.discard)

    async def _shadow(self, call: RoutedCall, frontier_text: str) -> None:
        """The small model answers a copy, after the caller has the frontier's answer; both are logged."""
        route, started = call.route, time.perf_counter()
        row = {**call.row, "uid": new_uid(), "upstream": "small-model", "served_by": SERVED_BY_SHADOW,
               "model": route.small_model, "request_params": {**call.row["request_params"], "shadow_of": call.row["uid"]}}
        policy, request = self._small_model.request(route, call.protocol, call.body, row)
        try:
            _, answer, token_logprobs = await self._small_model.ask(route, request)
        except SMALL_MODEL_FAILURES as exc:
            self._judge(route, ok=False, latency_ms=(time.perf_counter() - started) * 1000)
            self._rows.error(row, started, 502, f"small model failed in the shadow: {type(exc).__name__}: {exc}")
            return
        if route.cascade and token_logprobs:
            row["confidence"] = confidence(route.cascade.measure, token_logprobs)
        latency_ms = (time.perf_counter() - started) * 1000
        agreed, valid = agrees(answer.text, frontier_text), policy.valid_answer(answer.text, request.get("messages"))
        row["request_params"].update(agrees_with_frontier=agreed, valid_answer=valid)
        self._rows.ok(row, started, as_tool_calls(answer) if policy.tool_calls and valid else answer)
        self._metrics.served[route.workload, SERVED_BY_SHADOW] += 1
        self._judge(route, latency_ms=latency_ms, agreed=agreed, valid=valid,
                    unsupported=_unsupported_share(route, row, answer.text))
        # A cascade's evaluated agreement is its covered rows': the autopilot compares the copies it would cover.
        if route.autopilot and (route.cascade is None or (row["confidence"] or 0.0) >= route.cascade.threshold):
            self.routes.compared(route, agreed)

    async def _audit(self, call: RoutedCall) -> None:
        """The frontier answers a copy of a call the small model answered alone; the two are compared and the
        frontier's answer recorded (``served_by`` audit), off the caller's path."""
        route, small_row, started = call.route, call.row, time.perf_counter()
        row = {**small_row, "uid": new_uid(), "served_by": SERVED_BY_AUDIT,
               "model": small_row["request_params"].get("model"),
               "request_params": {**small_row["request_params"], "audit_of": small_row["uid"]}}
        try:
            upstream, answer = await call.ask_frontier()
        except Exception as exc:  # noqa: BLE001 - an audit that fails is recorded, never raised to anyone
            self._rows.error(row, started, 502, f"frontier audit failed: {type(exc).__name__}: {exc}")
            return
        reference = tool_call_answer(answer.tool_calls) if route.policy.tool_calls else answer.text
        agreed = isinstance(reference, str) and isinstance(call.small_text, str) and agrees(call.small_text, reference)
        row["upstream"] = upstream
        row["request_params"]["agrees_with_frontier"] = agreed
        self._rows.ok(row, started, answer)
        self._metrics.audited[route.workload, "agreed" if agreed else "disagreed"] += 1
        self._judge(route, audited=agreed)
        if route.autopilot:
            self.routes.compared(route, agreed)

    def _judge(self, route: Route, *, ok: bool = True, latency_ms: float = 0.0, agreed: bool | None = None,
               valid: bool = True, unsupported: float | None = None, covered: bool | None = None,
               audited: bool | None = None) -> None:
        """Feed the workload's rollback window; step the route back when a threshold is crossed. A cascade call also
        says whether it was ``covered``; an audit (``audited``: agreed or not) adds a comparison, not a call."""
        monitor = self._monitors.get(route.workload)
        if monitor is None:
            monitor = self._monitors[route.workload] = RolloutMonitor(self._config.rollback)
        if audited is not None:
            monitor.observe_audit(audited)
        else:
            monitor.observe(ok, latency_ms, agreed, valid, unsupported=unsupported)
            if covered is not None:
                monitor.observe_coverage(covered)
        # A large window's figures are recomputed at most every _CHECK_INTERVAL_S, not per call: over 18,000 calls
        # they cost milliseconds, and per call they held a route in `small` to ~315 requests/s at 64 concurrent
        # callers (6,583 with the interval; benchmarks/cutover.py, docs/benchmarks.md). A small window (low traffic,
        # where a call may be the last for a while) is judged on every call.
        now = time.monotonic()
        if len(monitor) >= _JUDGE_EVERY_CALL_BELOW and now < self._next_check.get(route.workload, 0.0):
            return
        self._next_check[route.workload] = now + _CHECK_INTERVAL_S
        reason = self.routes.breaches[route.workload] = monitor.breach(
            now, evaluated_coverage=route.cascade.coverage if route.cascade else None)
        current = self.routes.routes.get(route.workload)
        if reason is None or current is None or current.mode != route.mode:
            return
        self.routes.step_back(route.workload, reason)
        monitor.reset()
        self._metrics.rollbacks[route.workload] += 1


def _unsupported_share(route: Route, row: dict, answer: str | None) -> float | None:
    """For a JSON route, the share of the answer's values the request's messages do not support; None otherwise."""
    if route.policy.kind != "json" or answer is None:
        return None
    missing, values = unsupported_values(parse_record(answer), message_text(row["request_messages"]))
    return missing / values if values else None
