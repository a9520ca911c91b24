"""The cut-over at the gateway: which model answers a call on a routed workload, and what happens when it fails.

A workload's route (``distillery.serving.routing``) says how far its move to the small model has come:

- ``shadow``: the frontier answers; once the caller has that answer, the small model answers a copy, both are
  recorded (``served_by`` frontier / shadow) and compared;
- ``canary N%``: callers whose route key (the ``X-Distillery-Route-Key`` header, else the body's ``user``, else
  the call's own uid) hashes below N get the small model's answer; ``small``: every call does.

When the small model fails (connection, status, timeout) or answers something its route's decoding policy does
not allow, the caller gets the frontier's answer instead (a fallback, never an error) and the failure counts
towards the workload's rollback. Each small-model outcome feeds the workload's ``RolloutMonitor``; when its
window crosses a threshold the route steps back one mode, at once in this process, then in the database (so every
gateway follows within ``route_refresh_s``). On JSON routes each answer's share of values not found in the
request's messages (the grounding check) is in that window too. Every protocol's calls, streamed or not, may go to
the small model (legacy text completions excepted): the protocol translates the call into a chat request and the
small model's answer back into the caller's shape (``protocols``), tool calls included.

A route with a cascade (``Route.cascade``) asks the small model for its tokens' log-probabilities and answers a call
with it only when its confidence reaches the threshold; below it the call is escalated: the frontier answers it the
way it answers a fallback, but it counts as neither an error nor invalid. ``audit_percent`` of the covered calls are
also answered by the frontier after the caller has the small model's answer, recorded (``served_by`` audit) and
compared; the monitor watches the coverage against the evaluated one, and the audits' agreement.

Work that need not come before the caller's answer runs after it: the grounding check, the monitor, the metrics.
Routes are read from the database every ``route_refresh_s`` off the event loop, never per call, and what a route
sends the small model (its model name and decoding policy) is computed once per route (``Route.small_model_request``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import random
import time
from typing import Any, Awaitable, Callable

import orjson

from distillery import wire
from distillery.gateway.config import GatewayConfig
from distillery.gateway.http import Request, Responder, UpstreamPool
from distillery.gateway.metrics import GatewayMetrics
from distillery.gateway.protocols import WireProtocol
from distillery.gateway.proxy import upstream_error_message
from distillery.gateway.rows import Rows, new_uid
from distillery.serving import (CANARY, ROUTE_KEY_HEADER, SHADOW, AutopilotPolicy, RolloutMonitor, Route, RouteStore,
                                takes_small_model)
from distillery.store import SERVED_BY_AUDIT, SERVED_BY_FRONTIER, SERVED_BY_SHADOW, SERVED_BY_SMALL
from distillery.tasks import (DecodingPolicy, ToolSpec, agrees, confidence, prompt_text, tool_call_answer,
                             tool_calls_of, ungrounded)

# Answers a copy of the current call from the frontier: (the upstream's name, its answer). Raises on any failure.
AskFrontier = Callable[[], Awaitable[tuple[str, wire.Answer]]]
_SMALL_MODEL_FAILURES = (OSError, asyncio.TimeoutError, ValueError, KeyError, IndexError, TypeError)
_JSON_HEADERS = {"Content-Type": "application/json"}
_CHECK_INTERVAL_S = 0.1  # with a large window, a breach is found at most this late
_JUDGE_EVERY_CALL_BELOW = 500  # calls in the window
_STREAM_HEADERS = [("cache-control", "no-cache")]


class RouteTable:
    """The routes, read from the database every ``refresh_s`` off the event loop, never per request; with each read
    the autopilot's evidence gathered since the last one is added to the database and the routes are judged."""

    def __init__(self, store: RouteStore | None, refresh_s: float, autopilot: AutopilotPolicy):
        self.store = store
        self.refresh_s = refresh_s
        self.autopilot = autopilot
        self.routes: dict[str, Route] = store.all() if store else {}
        self.breaches: dict[str, str | None] = {}  # per workload: what its rollback window crossed when last judged
        self._pinned: dict[str, Route] = {}  # changed here, not yet stored: a refresh must not undo them
        self._compared: dict[tuple[str, int], list[int]] = {}  # (workload, epoch): [compared calls, agreeing]
        self._unsent: dict[tuple[str, int], list[int]] = {}  # counts a refresh could not store (the database is away)
        self._due = time.monotonic() + refresh_s
        self._refreshing = False

    def get(self, workload: str) -> Route | None:
        if self.store and not self._refreshing and time.monotonic() >= self._due:
            self._refreshing = True
            compared, self._compared = self._compared, {}  # taken on the event loop, which alone adds to it
            asyncio.get_running_loop().run_in_executor(None, self._refresh, compared, dict(self.breaches))
        return self.routes.get(workload)

    def compared(self, route: Route, agreed: bool) -> None:
        """A compared call of a route whose autopilot is on (a shadow copy, an audit): evidence for its stage."""
        counts = self._compared.setdefault((route.workload, route.epoch), [0, 0])
        counts[0] += 1
        counts[1] += agreed

    def _refresh(self, compared: dict[tuple[str, int], list[int]], breaches: dict[str, str | None]) -> None:
        for key, (calls, agreed) in compared.items():
            counts = self._unsent.setdefault(key, [0, 0])
            counts[0] += calls
            counts[1] += agreed
        try:
            self._run_autopilot(breaches)
            self.routes = {**self.store.all(), **self._pinned}
        except Exception:  # noqa: BLE001 - a database outage keeps the last known routes, and the evidence to store
            pass
        finally:
            self._due = time.monotonic() + self.refresh_s
            self._refreshing = False

    def _run_autopilot(self, breaches: dict[str, str | None]) -> None:
        """Store the evidence gathered since the last refresh, then judge every route whose autopilot is on; a
        decision is stored only if its route has not changed meanwhile (another gateway, a person)."""
        if not self._unsent and not any(route.autopilot for route in self.routes.values()):
            return
        states = self.store.states()
        for (workload, epoch), (calls, agreed) in list(self._unsent.items()):
            state = states.get(workload)
            # Counts of a stage that is over belong to no test any more; nor do those of an approval the autopilot
            # cannot test (`route auto on` says why). Either way they are dropped; the others once stored.
            if state is not None and state.route.epoch == epoch and state.route.approval is not None:
                try:
                    llr = self.autopilot.llr_of(state.route.approval, calls, agreed)
                except ValueError:
                    llr = None
                if llr is not None and self.store.add_evidence(workload, epoch, calls, agreed, llr,
                                                               self.autopilot.step_back_bound):
                    states[workload] = self.store.state(workload) or state
            del self._unsent[workload, epoch]
        now = dt.datetime.now(dt.timezone.utc)
        for workload, state in states.items():
            try:
                decision = self.autopilot.judge(state.route, state.evidence, state.since, now, breaches.get(workload))
            except ValueError:
                continue
            if decision is not None:
                self.store.set(decision.route, decision.reason, decision.kind, evidence=decision.evidence,
                               expected_epoch=state.route.epoch)

    def roll_back(self, route: Route, reason: str) -> None:
        """Effective at once in this process; stored (and so seen by every gateway) off the event loop."""
        self._pinned[route.workload] = route
        self.routes = {**self.routes, route.workload: route}
        if self.store:
            asyncio.get_running_loop().run_in_executor(None, self._store_rollback, route, reason)

    def _store_rollback(self, route: Route, reason: str) -> None:
        try:
            self.store.set(route, f"automatic: {reason}", kind="rollback")
        finally:  # stored, or the database is away: either way the database decides from the next refresh on
            self._pinned.pop(route.workload, None)


class Cutover:
    def __init__(self, store: RouteStore | None, config: GatewayConfig, rows: Rows, metrics: GatewayMetrics):
        self.routes = RouteTable(store, config.route_refresh_s, config.autopilot)
        self._config = config
        self._rows = rows
        self._metrics = metrics
        self._monitors: dict[str, RolloutMonitor] = {}
        self._next_check: dict[str, float] = {}  # per workload: when its monitor's window is judged again
        self._pools: dict[str, UpstreamPool] = {}
        self._shadows: set[asyncio.Task] = set()  # shadow and audit calls in flight
        self._audit_share = config.audit_percent / 100

    def route(self, protocol: WireProtocol, workload: str) -> Route | None:
        """The workload's route, when this call is one the small model may answer."""
        return self.routes.get(workload) if protocol.small_model_may_answer else None

    @staticmethod
    def small_model_takes(route: Route, request: Request, body: dict[str, Any], row: dict) -> bool:
        """Whether the small model answers this call: a canary keeps one caller on one side by its route key."""
        key = request.headers.get(ROUTE_KEY_HEADER) or body.get("user")
        return takes_small_model(route, key if isinstance(key, str) and key else row["uid"])

    async def small_model_answers(self, route: Route, protocol: WireProtocol, body: dict[str, Any], row: dict,
                                  responder: Responder, started: float, ask_frontier: AskFrontier) -> bool:
        """Answer the caller with the small model; False (the frontier answers instead) when it fails in any way, or
        when a cascade route's small model is less sure of its answer than the threshold (the call is escalated).

        A streamed call is answered the same way: the small model's whole (short) answer is checked first, then sent
        as the protocol's stream, so a failed, invalid or escalated answer falls back before the caller has a byte of
        it. ``ask_frontier`` answers a copy of the call from the frontier: a cascade audits a share of its covered
        calls with it, off the caller's path."""
        asked = time.perf_counter()
        policy, request = self._request(route, protocol, body, row)
        try:
            data, answer, token_logprobs = await self._ask(route, request)
        except _SMALL_MODEL_FAILURES as exc:
            self._watch(route, ok=False, latency_ms=(time.perf_counter() - asked) * 1000)
            self._fell_back(route, row, f"{type(exc).__name__}: {exc}")
            return False
        latency_ms = (time.perf_counter() - asked) * 1000
        if not policy.valid_answer(answer.text, request.get("messages")):
            self._watch(route, ok=True, latency_ms=latency_ms, valid=False)
            self._fell_back(route, row, f"invalid answer: {answer.text[:200]}")
            return False
        cascade = route.cascade
        covered = None
        if cascade:
            row["confidence"] = confidence(cascade.measure, token_logprobs) if token_logprobs else None
            covered = row["confidence"] is not None and row["confidence"] >= cascade.threshold
            if not covered:
                self._watch(route, ok=True, latency_ms=latency_ms, covered=False)
                self._escalated(route, row, answer.text)
                return False
        if policy.tool_calls:
            answer = _as_tool_calls(answer)
        row.update(upstream="small-model", served_by=SERVED_BY_SMALL)
        self._rows.ok(row, started, answer)
        if cascade and not body.get("logprobs"):
            data = None  # the log-probabilities the cascade asked for are not the caller's
        if body.get("stream"):
            responder.send(200, protocol.reply(answer, data, body), "text/event-stream", extra=_STREAM_HEADERS)
        else:
            responder.send(200, protocol.reply(answer, data, body))
        self._metrics.count(protocol.endpoint, 200, seconds=time.perf_counter() - started)
        self._metrics.served[route.workload, SERVED_BY_SMALL] += 1
        self._watch(route, ok=True, latency_ms=latency_ms, ungrounded=_ungrounded_share(route, row, answer.text),
                    covered=covered)
        if cascade:
            self._metrics.covered[route.workload] += 1
        if (cascade or route.autopilot) and self._audit_share and random.random() < self._audit_share:
            self._background(self._audit(route, row, answer.text if not policy.tool_calls else
                                         tool_call_answer(answer.tool_calls), ask_frontier))
        return True

    def frontier_answered(self, route: Route, body: dict[str, Any], row: dict, answer: wire.Answer,
                          protocol: WireProtocol) -> None:
        """After the caller has the frontier's answer: count it, and on a shadow route let the small model answer a
        copy in the background; so too on a canary route whose autopilot is on, for the calls the small model did not
        take (its evidence comes at the stage's whole traffic, not only from audits)."""
        self._metrics.served[route.workload, SERVED_BY_FRONTIER] += 1
        if route.mode != SHADOW and not (route.autopilot and route.mode == CANARY
                                         and not _small_model_tried(row)):
            return
        reference = tool_call_answer(answer.tool_calls) if route.policy.tool_calls else answer.text
        if isinstance(reference, str):
            self._background(self._shadow(route, protocol, body, row, reference))

    def _background(self, work) -> None:
        task = asyncio.create_task(work)
        self._shadows.add(task)  # a reference, so the task is not collected mid-flight
        task.add_done_callback(self._shadows.discard)

    async def finish(self, timeout_s: float = 10) -> None:
        """Let shadow and audit calls still in flight end (and be recorded)."""
        if self._shadows:
            await asyncio.wait(set(self._shadows), timeout=timeout_s)

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()

    @staticmethod
    def _request(route: Route, protocol: WireProtocol, body: dict[str, Any], row: dict) -> tuple[DecodingPolicy, dict]:
        """The policy this call is answered under and the small model's request. A tool-call route's policy is
        narrowed to the call's own tools and tool choice; a grounded route sends the grammar of the call's own user
        text (one without any is decoded under the schema alone, and its row says so)."""
        if route.policy.tool_calls:
            policy, constraint = _tool_policy(route.policy, protocol.tools(body))
            return policy, {**protocol.small_model_request(body), "model": route.small_model, **constraint}
        request = {**protocol.small_model_request(body), **route.small_model_request}
        if route.policy.copied_fields:
            grammar, note = route.policy.request_grammar(request.get("messages"))
            if grammar:
                request["structured_outputs"] = {"grammar": grammar}
            else:
                row["request_params"] = {**row["request_params"], "distillery_grounding": note}
        return route.policy, request

    async def _ask(self, route: Route, request: dict[str, Any]) -> tuple[bytes, wire.Answer, list[float] | None]:
        """The small model's raw answer, what it says, and its chosen tokens' log-probabilities (when the route asked
        for them); raises on any failure (the caller falls back)."""
        pool = self._pools.get(route.small_url)
        if pool is None:
            pool = self._pools[route.small_url] = UpstreamPool(route.small_url)
        answer = await asyncio.wait_for(pool.post("/chat/completions", orjson.dumps(request), _JSON_HEADERS),
                                        self._config.small_timeout_s)
        try:
            data = await asyncio.wait_for(answer.read(), self._config.small_timeout_s)
        finally:
            answer.release()
        if answer.status != 200:
            raise ValueError(upstream_error_message(data, answer.status))
        payload = orjson.loads(data)
        result = wire.answer_of(payload)
        if not isinstance(result.text, str):
            raise ValueError("the small model's completion has no text")
        return data, result, wire.token_logprobs_of(payload) if route.cascade else None

    async def _audit(self, route: Route, small_row: dict, small_text: str | None, ask_frontier: AskFrontier) -> None:
        """The frontier answers a copy of a call the cascade's small model answered alone; the two are compared and
        the frontier's answer recorded (``served_by`` audit), off the caller's path."""
        started = time.perf_counter()
        row = {**small_row, "uid": new_uid(), "served_by": SERVED_BY_AUDIT,
               "model": small_row["request_params"].get("model"),
               "request_params": {**small_row["request_params"], "audit_of": small_row["uid"]}}
        try:
            upstream, answer = await ask_frontier()
        except Exception as exc:  # noqa: BLE001 - an audit that fails is recorded, never raised to anyone
            self._rows.error(row, started, 502, f"frontier audit failed: {type(exc).__name__}: {exc}")
            return
        reference = tool_call_answer(answer.tool_calls) if route.policy.tool_calls else answer.text
        agreed = isinstance(reference, str) and isinstance(small_text, str) and agrees(small_text, reference)
        row["upstream"] = upstream
        row["request_params"]["agrees_with_frontier"] = agreed
        self._rows.ok(row, started, answer)
        self._metrics.audited[route.workload, "agreed" if agreed else "disagreed"] += 1
        self._watch(route, audited=agreed)
        if route.autopilot:
            self.routes.compared(route, agreed)

    async def _shadow(self, route: Route, protocol: WireProtocol, body: dict[str, Any], frontier_row: dict,
                      frontier_text: str) -> None:
        """The small model answers a copy, after the caller has the frontier's answer; both are logged."""
        started = time.perf_counter()
        row = {**frontier_row, "uid": new_uid(), "upstream": "small-model", "served_by": SERVED_BY_SHADOW,
               "model": route.small_model,
               "request_params": {**frontier_row["request_params"], "shadow_of": frontier_row["uid"]}}
        policy, request = self._request(route, protocol, body, row)
        try:
            _, answer, token_logprobs = await self._ask(route, request)
        except _SMALL_MODEL_FAILURES as exc:
            self._watch(route, ok=False, latency_ms=(time.perf_counter() - started) * 1000)
            self._rows.error(row, started, 502, f"small model failed in the shadow: {type(exc).__name__}: {exc}")
            return
        if route.cascade and token_logprobs:
            row["confidence"] = confidence(route.cascade.measure, token_logprobs)
        latency_ms = (time.perf_counter() - started) * 1000
        agreed, valid = agrees(answer.text, frontier_text), policy.valid_answer(answer.text, request.get("messages"))
        row["request_params"].update(agrees_with_frontier=agreed, valid_answer=valid)
        if policy.tool_calls and valid:
            answer = _as_tool_calls(answer)
        self._rows.ok(row, started, answer)
        self._metrics.served[route.workload, SERVED_BY_SHADOW] += 1
        self._watch(route, ok=True, latency_ms=latency_ms, agreed=agreed, valid=valid,
                    ungrounded=_ungrounded_share(route, row, answer.text))
        # A cascade's evaluated agreement is its covered rows': the autopilot compares the copies it would cover.
        if route.autopilot and (route.cascade is None or (row["confidence"] or 0.0) >= route.cascade.threshold):
            self.routes.compared(route, agreed)

    def _fell_back(self, route: Route, row: dict, reason: str) -> None:
        self._metrics.fallbacks[route.workload] += 1
        row["request_params"] = {**row["request_params"], "distillery_fallback": reason}

    def _escalated(self, route: Route, row: dict, small_text: str) -> None:
        """A cascade call the small model is not sure enough of: the frontier answers it (not an error, not invalid);
        the row keeps the small model's confidence and answer."""
        self._metrics.escalated[route.workload] += 1
        sure = "no confidence" if row["confidence"] is None else f"confidence {row['confidence']:.4g}"
        row["request_params"] = {**row["request_params"], "distillery_escalated": {
            "reason": f"{sure} < threshold {route.cascade.threshold:.4g}", "small_answer": small_text[:2000]}}

    def _watch(self, route: Route, *, ok: bool = True, latency_ms: float = 0.0, agreed: bool | None = None,
               valid: bool = True, ungrounded: float | None = None, covered: bool | None = None,
               audited: bool | None = None) -> None:
        """Feed the workload's rollout monitor; step the route back when a threshold is crossed. A cascade call also
        says whether it was ``covered``; an audit (``audited``: agreed or not) adds a comparison, not a call."""
        monitor = self._monitors.get(route.workload)
        if monitor is None:
            monitor = self._monitors[route.workload] = RolloutMonitor(self._config.rollback)
        if audited is not None:
            monitor.observe_audit(audited)
        else:
            monitor.observe(ok, latency_ms, agreed, valid, ungrounded=ungrounded)
            if covered is not None:
                monitor.observe_coverage(covered)
        # A large window's figures are recomputed at most every _CHECK_INTERVAL_S, not per call: over 18,000 calls
        # they cost milliseconds, and per call they held a route in `small` to ~315 requests/s at 64 concurrent
        # callers (6,583 with the interval; benchmarks/cutover.py, 2026-12-02). A small window (low traffic, where a
        # call may be the last for a while) is judged on every call.
        now = time.monotonic()
        if len(monitor) >= _JUDGE_EVERY_CALL_BELOW and now < self._next_check.get(route.workload, 0.0):
            return
        self._next_check[route.workload] = now + _CHECK_INTERVAL_S
        reason = self.routes.breaches[route.workload] = monitor.breach(
            now, evaluated_coverage=route.cascade.coverage if route.cascade else None)
        current = self.routes.routes.get(route.workload)
        if reason is None or current is None or current.mode != route.mode:
            return
        self.routes.roll_back(self.routes.autopilot.previous_route(current) if current.autopilot else current.step_back(),
                              reason)
        monitor.reset()
        self._metrics.rollbacks[route.workload] += 1


@functools.lru_cache(maxsize=256)
def _tool_policy(policy: DecodingPolicy, spec: ToolSpec | None) -> tuple[DecodingPolicy, dict]:
    """A tool-call policy narrowed to a request's tools, and its ``structured_outputs``; computed once per set of
    tools (a workload's calls mostly offer the same)."""
    narrowed = policy.for_request(spec)
    constraint = narrowed.structured_outputs()
    return narrowed, {"structured_outputs": constraint} if constraint else {}


def _as_tool_calls(answer: wire.Answer) -> wire.Answer:
    """The small model's tool-call answer as the function calls a caller gets (new ids, arguments as JSON text)."""
    calls = [wire.tool_call(call["name"], orjson.dumps(call["arguments"]).decode())
             for call in tool_calls_of(answer.text) or ()]
    return wire.Answer(None, calls, None, "tool_calls", answer.model, answer.usage)


def _small_model_tried(row: dict) -> bool:
    """Whether the small model already had this call: it failed (fallback) or was not sure enough (escalated)."""
    params = row["request_params"]
    return "distillery_fallback" in params or "distillery_escalated" in params


def _ungrounded_share(route: Route, row: dict, answer: str | None) -> float | None:
    """For a JSON route, the share of the answer's values not in the request's messages; None otherwise."""
    if route.policy.kind != "json" or answer is None:
        return None
    missing, values = ungrounded(answer, prompt_text(row["request_messages"]))
    return missing / values if values else None
