"""The gateway's request handling: auth, workload, proxying, error objects, recording, metrics.

The HTTP layer under it is ``distillery.capture.gateway.http`` (why: see there).

What a caller sees when something goes wrong, always as an OpenAI-style error object:
401 unknown or revoked gateway key; 403 a workload outside the key's scope (recorded as an error under
the key's default workload, so it never becomes training data or a new workload); 400 malformed JSON or
an invalid workload name;
413 body over ``max_body_bytes``; 404/405 unknown path or method; 502 upstream unreachable
(connection refused, reset, invalid HTTP); 504 upstream timed out; an upstream 4xx/5xx is
passed through with its status. Every one of these that reached the proxy step is recorded
as a failed exchange.

Routes (``distillery.serving.routing``) decide per workload whether the small model answers a
non-streamed chat completion, answers a copy in the shadow, or is not asked. When it is asked
to answer and fails or answers something invalid for the workload, the caller gets the
frontier's answer (a fallback, never an error), and the failure counts towards an automatic
rollback of the route. Streamed calls always go to the frontier.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import cachetools
import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from distillery.capture.gateway.config import GatewayConfig
from distillery.capture.gateway.http import (ClientDisconnected, Request, Responder, UpstreamPool, UpstreamResponse,
                                             error_body)
from distillery.capture.gateway.keys import ApiKey, KeyStore
from distillery.capture.recorder import Recorder
from distillery.serving import ROUTE_KEY_HEADER, SHADOW, RolloutMonitor, Route, RouteStore, takes_small_model
from distillery.settings import DEFAULT_WORKLOAD, validate_workload
from distillery.store import SERVED_BY_FRONTIER, SERVED_BY_SHADOW, SERVED_BY_SMALL, STATUS_ERROR, STATUS_OK
from distillery.tasks import agrees, prompt_text, ungrounded

WORKLOAD_HEADER = "x-distillery-workload"
# Row uids: a random per-process prefix and a counter, as unique as uuid4 at a fraction of its cost.
_UID_PREFIX = os.urandom(8).hex()
_uid_counter = itertools.count()


class GatewayError(Exception):
    """Answered to the caller as an OpenAI error object with this status."""

    def __init__(self, status: int, message: str, code: str):
        super().__init__(message)
        self.status = status
        self.code = code


class _Metrics:
    def __init__(self, recorder: Recorder):
        self.registry = CollectorRegistry()
        self.requests = Counter("distillery_gateway_requests", "Proxied requests", ["endpoint", "status"],
                                registry=self.registry)
        self.errors = Counter("distillery_gateway_errors", "Failed requests by cause", ["cause"],
                              registry=self.registry)
        self.served = Counter("distillery_gateway_served", "Chat completions by who answered them",
                              ["workload", "served_by"], registry=self.registry)
        self.fallbacks = Counter("distillery_gateway_fallbacks", "Small-model failures answered by the frontier",
                                 ["workload"], registry=self.registry)
        self.rollbacks = Counter("distillery_gateway_rollbacks", "Automatic route rollbacks", ["workload"],
                                 registry=self.registry)
        self.frontier_usd = Counter(
            "distillery_gateway_frontier_usd", "Answered chat completions at the frontier's list price: paid "
            "(served_by=frontier) or avoided (served_by=small: the price of the model the caller asked for, on the "
            "small model's tokens)", ["workload", "served_by"], registry=self.registry)
        self.latency = Histogram("distillery_gateway_request_seconds", "Request latency through the gateway",
                                 ["endpoint"], registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        for name, doc, read in [
            ("distillery_gateway_queue_depth", "Rows waiting for the writer", lambda: recorder.pending),
            ("distillery_gateway_rows_received", "Rows handed to the recorder", lambda: recorder.received),
            ("distillery_gateway_rows_written", "Rows written to the log store directly", lambda: recorder.written),
            ("distillery_gateway_rows_journaled", "Rows written to the local journal", lambda: recorder.journaled),
            ("distillery_gateway_rows_replayed", "Journaled rows since replayed into the store",
             lambda: recorder.replayed),
            ("distillery_gateway_database_up", "1 while the log store accepts writes",
             lambda: int(recorder.database_up)),
        ]:
            Gauge(name, doc, registry=self.registry).set_function(read)
        # Labelled children looked up once: .labels() costs more than the increment itself.
        self._children: dict[tuple, Any] = {}

    def _child(self, metric, *labels: str):
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def increment(self, metric, *labels: str) -> None:
        self._child(metric, *labels).inc()

    def add(self, metric, amount: float, *labels: str) -> None:
        self._child(metric, *labels).inc(amount)

    def count(self, endpoint: str, status: int, cause: str | None = None, seconds: float | None = None) -> None:
        self._child(self.requests, endpoint, str(status)).inc()
        if cause:
            self._child(self.errors, cause).inc()
        if seconds is not None:
            self._child(self.latency, endpoint).observe(seconds)


@dataclass
class _StreamSummary:
    """What the recorder needs from a server-sent-event stream, parsed as it passes."""

    parts: list[str] = field(default_factory=list)
    model: str | None = None
    finish_reason: str | None = None
    usage: dict | None = None
    _buffer: bytes = b""

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        *events, self._buffer = self._buffer.split(b"\n\n")
        for event in events:
            for line in event.split(b"\n"):
                if line.startswith(b"data:") and (data := line[5:].strip()) != b"[DONE]":
                    self._take(data)

    def _take(self, data: bytes) -> None:
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        self.model = payload.get("model") or self.model
        self.usage = payload.get("usage") or self.usage
        for choice in payload.get("choices") or []:
            delta = choice.get("delta") or {}
            self.parts.append(delta.get("content") or choice.get("text") or "")
            self.finish_reason = choice.get("finish_reason") or self.finish_reason


class _Deadlines:
    """Cancels requests that outlive the upstream timeout, from one periodic check.

    Why not ``asyncio.timeout`` per request: its timer handle cost ~10% of the gateway's CPU
    under load. The price is precision: a timeout fires up to ``timeout_s / 10`` (at most
    0.1 s) late. ``discard(task)`` tells a timeout apart from any other cancellation.
    """

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self._interval = min(0.1, timeout_s / 10)
        self._due: dict[asyncio.Task, float] = {}
        self._expired: set[asyncio.Task] = set()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, task: asyncio.Task, timeout_s: float | None = None) -> None:
        """Watch ``task`` (again): it is cancelled once ``timeout_s`` (default: ``self.timeout_s``) pass."""
        self._due[task] = time.monotonic() + (timeout_s or self.timeout_s)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._sweep)

    def discard(self, task: asyncio.Task) -> bool:
        """Stop watching ``task``; True when it was cancelled for running out of time."""
        self._due.pop(task, None)
        if task in self._expired:
            self._expired.discard(task)
            return True
        return False

    def _sweep(self) -> None:
        now = time.monotonic()
        for task, due in list(self._due.items()):
            if due <= now:
                del self._due[task]
                self._expired.add(task)
                task.cancel()
        self._timer = asyncio.get_running_loop().call_later(self._interval, self._sweep) if self._due else None


class _RouteTable:
    """The routes, read from the database every ``refresh_s`` off the event loop, never per request."""

    def __init__(self, store: RouteStore | None, refresh_s: float):
        self.store = store
        self.refresh_s = refresh_s
        self.routes: dict[str, Route] = store.all() if store else {}
        self._pinned: dict[str, Route] = {}  # changed here, not yet stored: a refresh must not undo them
        self._due = time.monotonic() + refresh_s
        self._refreshing = False

    def get(self, workload: str) -> Route | None:
        if self.store and not self._refreshing and time.monotonic() >= self._due:
            self._refreshing = True
            asyncio.get_running_loop().run_in_executor(None, self._refresh)
        return self.routes.get(workload)

    def _refresh(self) -> None:
        try:
            self.routes = {**self.store.all(), **self._pinned}
        except Exception:  # noqa: BLE001 - a database outage keeps the last known routes
            pass
        finally:
            self._due = time.monotonic() + self.refresh_s
            self._refreshing = False

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


class Gateway:
    def __init__(self, config: GatewayConfig, recorder: Recorder, keys: KeyStore, routes: RouteStore | None = None):
        self.config = config
        self.recorder = recorder
        self.keys = keys
        self.metrics = _Metrics(recorder)
        self.routes = _RouteTable(routes, config.route_refresh_s)
        self._monitors: dict[str, RolloutMonitor] = {}
        self._small_pools: dict[str, UpstreamPool] = {}
        self._background: set[asyncio.Task] = set()
        self._key_cache: cachetools.TTLCache[str, ApiKey | None] = cachetools.TTLCache(
            config.key_cache_size, config.key_cache_ttl_s)
        self._deadlines = _Deadlines(config.upstream_timeout_s)
        self._pools = {name: UpstreamPool(upstream.base_url) for name, upstream in config.upstreams.items()}
        # Provider keys are read from the environment once, at start.
        self._upstream_headers = {
            name: {"Content-Type": "application/json",
                   **({"Authorization": f"Bearer {upstream.api_key}"} if upstream.api_key else {})}
            for name, upstream in config.upstreams.items()}
        self._routes = {
            "/v1/chat/completions": ("POST", self.chat_completions),
            "/v1/completions": ("POST", self.completions),
            "/v1/models": ("GET", self.models),
            "/healthz": ("GET", self.healthz),
            "/metrics": ("GET", self.prometheus),
        }

    async def handle(self, request: Request, responder: Responder) -> None:
        route = self._routes.get(request.path.rstrip("/") or "/")
        if route is None:
            responder.send(404, error_body(f"no route {request.path}", "not_found"))
        elif request.method != route[0]:
            responder.send(405, error_body(f"{request.path} takes {route[0]}", "method_not_allowed"))
        else:
            await route[1](request, responder)

    async def finish_shadows(self, timeout_s: float = 10) -> None:
        """Let shadow calls still in flight end (and be recorded) before the gateway closes."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=timeout_s)

    def close(self) -> None:
        """After the HTTP server stopped: drop upstream connections, flush the recorder."""
        for pool in [*self._pools.values(), *self._small_pools.values()]:
            pool.close()
        self.recorder.stop()

    async def healthz(self, _request: Request, responder: Responder) -> None:
        responder.send(200, json.dumps({"status": "ok", "log_store_up": self.recorder.database_up,
                                        "queue_depth": self.recorder.pending,
                                        "journal_backlog": self.recorder.journal_backlog}).encode())

    async def prometheus(self, _request: Request, responder: Responder) -> None:
        responder.send(200, generate_latest(self.metrics.registry), "text/plain; version=0.0.4; charset=utf-8")

    async def models(self, request: Request, responder: Responder) -> None:
        try:
            await self._authenticate(request)
        except GatewayError as exc:
            return self._refuse("models", responder, exc, "auth")
        data = [{"id": model, "object": "model", "owned_by": upstream.name}
                for upstream in self.config.upstreams.values() for model in upstream.models]
        responder.send(200, json.dumps({"object": "list", "data": data}).encode())

    async def chat_completions(self, request: Request, responder: Responder) -> None:
        await self._proxy(request, responder, "chat.completions", "/chat/completions")

    async def completions(self, request: Request, responder: Responder) -> None:
        await self._proxy(request, responder, "completions", "/completions")

    async def _authenticate(self, request: Request) -> ApiKey | None:
        """The caller's key record, or None when keys are not required; GatewayError 401 otherwise."""
        if not self.config.require_api_key:
            return None
        header = request.headers.get("authorization", "")
        key = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if not key:
            raise GatewayError(401, "missing gateway API key (Authorization: Bearer ...)", "invalid_api_key")
        if key in self._key_cache:
            record = self._key_cache[key]
        else:
            record = self._key_cache[key] = await asyncio.get_running_loop().run_in_executor(
                None, self.keys.lookup, key)
        if record is None:
            raise GatewayError(401, "unknown or revoked gateway API key", "invalid_api_key")
        return record

    def _parse(self, request: Request, caller: ApiKey | None) -> tuple[dict, str]:
        """The request body and its workload; GatewayError 413/400 when the request is unusable."""
        if request.too_large:
            raise GatewayError(413, f"request body over {self.config.max_body_bytes} bytes", "request_too_large")
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError as exc:
            raise GatewayError(400, f"request body is not valid JSON: {exc}", "invalid_request_error") from exc
        if not isinstance(body, dict):
            raise GatewayError(400, "request body must be a JSON object", "invalid_request_error")
        workload = _workload(request, body, caller)
        try:
            validate_workload(workload)
        except ValueError as exc:
            raise GatewayError(400, str(exc), "invalid_request_error") from exc
        return body, workload

    async def _proxy(self, request: Request, responder: Responder, endpoint: str, path: str) -> None:
        started = time.perf_counter()
        try:
            caller = await self._authenticate(request)
        except GatewayError as exc:
            return self._refuse(endpoint, responder, exc, "auth")
        try:
            body, workload = self._parse(request, caller)
        except GatewayError as exc:
            return self._refuse(endpoint, responder, exc, "too_large" if exc.status == 413 else "bad_request")

        model = body.get("model")
        upstream = self.config.upstream_for(model)
        stream = bool(body.get("stream"))
        if caller is not None and not caller.may_write(workload):
            # Recorded, as an error under the key's own default workload: it never becomes training data
            # and never creates the foreign workload (a Dagster partition).
            row = _new_row(body, caller.default_workload, endpoint, upstream.name)
            row["request_params"]["refused_workload"] = workload
            message = f"gateway key {caller.name!r} may not write to workload {workload!r} (its scope: {caller.scope})"
            return self._fail(responder, endpoint, row, started, 403, message, "permission_denied")
        row = _new_row(body, workload, endpoint, upstream.name)
        route = self.routes.get(workload) if endpoint == "chat.completions" and not stream else None
        if route and takes_small_model(route, _route_key(request, body, row["uid"])):
            if await self._small_model_answers(route, body, row, responder, started):
                return
        raw = request.body
        if stream and "stream_options" not in body:
            # Ask for the usage chunk so streamed calls are costed like the others (the row keeps the caller's params).
            raw = orjson.dumps({**body, "stream_options": {"include_usage": True}})
        task = asyncio.current_task()
        self._deadlines.add(task)
        try:
            answer = await self._pools[upstream.name].post(path, raw, self._upstream_headers[upstream.name])
            try:
                if stream and answer.status == 200:
                    return await self._relay_stream(responder, answer, row, endpoint, started,
                                                    _provider_headers(answer.headers))
                data = await answer.read()
            finally:
                answer.release()
        except asyncio.CancelledError:
            if not self._deadlines.discard(task):
                raise
            task.uncancel()
            if responder.status:  # timed out mid-stream
                return self._upstream_stream_broke(row, endpoint, started, "timed out")
            return self._fail(responder, endpoint, row, started, 504, f"upstream {upstream.name} timed out after "
                              f"{self.config.upstream_timeout_s:g}s", "upstream_timeout")
        except OSError as exc:  # ConnectionError and refused connections are OSErrors
            return self._fail(responder, endpoint, row, started, 502, f"upstream {upstream.name} unreachable: "
                              f"{exc or type(exc).__name__}", "upstream_unreachable")
        finally:
            self._deadlines.discard(task)

        provider_headers = _provider_headers(answer.headers)
        if answer.status >= 400:
            return self._fail(responder, endpoint, row, started, answer.status,
                              _upstream_error_message(data, answer.status), "upstream_error", passthrough=data,
                              headers=provider_headers)
        try:
            payload = orjson.loads(data)
            choice = payload["choices"][0]
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            return self._fail(responder, endpoint, row, started, 502, "upstream returned an invalid completion",
                              "upstream_invalid")
        message = choice.get("message") or {}
        text = message.get("content", choice.get("text"))
        self._record_ok(row, started, payload.get("model"), text, choice.get("finish_reason"), payload.get("usage"))
        self._observe(endpoint, answer.status, started)
        responder.send(answer.status, data, extra=provider_headers)
        if route:
            self.metrics.increment(self.metrics.served, row["workload"], SERVED_BY_FRONTIER)
            if route.mode == SHADOW and isinstance(text, str):
                shadow = asyncio.create_task(self._shadow(route, body, row, text))
                self._background.add(shadow)  # a reference, so the task is not collected mid-flight
                shadow.add_done_callback(self._background.discard)

    def _small_pool(self, url: str) -> UpstreamPool:
        pool = self._small_pools.get(url)
        if pool is None:
            pool = self._small_pools[url] = UpstreamPool(url)
        return pool

    async def _ask_small_model(self, route: Route, body: dict) -> tuple[bytes, dict, str]:
        """The small model's raw answer, parsed, and its text; raises on any failure (the caller falls back)."""
        # The route's decoding policy replaces whatever output format the caller asked the frontier for.
        raw = orjson.dumps({**{k: v for k, v in body.items() if k != "response_format"}, **route.small_model_request})
        answer = await asyncio.wait_for(
            self._small_pool(route.small_url).post("/chat/completions", raw, {"Content-Type": "application/json"}),
            self.config.small_timeout_s)
        try:
            data = await asyncio.wait_for(answer.read(), self.config.small_timeout_s)
        finally:
            answer.release()
        if answer.status != 200:
            raise ValueError(_upstream_error_message(data, answer.status))
        payload = orjson.loads(data)
        text = payload["choices"][0]["message"]["content"]
        if not isinstance(text, str):
            raise ValueError("the small model's completion has no text")
        return data, payload, text

    async def _small_model_answers(self, route: Route, body: dict, row: dict, responder: Responder,
                                   started: float) -> bool:
        """Answer with the small model; False (the frontier answers instead) when it fails in any way."""
        asked = time.perf_counter()
        try:
            data, payload, text = await self._ask_small_model(route, body)
        except (OSError, asyncio.TimeoutError, ValueError, KeyError, IndexError, TypeError) as exc:
            self._watch(route, ok=False, latency_ms=(time.perf_counter() - asked) * 1000)
            self.metrics.increment(self.metrics.fallbacks, route.workload)
            row["request_params"] = {**row["request_params"], "distillery_fallback": f"{type(exc).__name__}: {exc}"}
            return False
        if not route.valid_answer(text):
            self._watch(route, ok=True, latency_ms=(time.perf_counter() - asked) * 1000, valid=False)
            self.metrics.increment(self.metrics.fallbacks, route.workload)
            row["request_params"] = {**row["request_params"], "distillery_fallback": f"invalid answer: {text[:200]}"}
            return False
        self._watch(route, ok=True, latency_ms=(time.perf_counter() - asked) * 1000,
                    ungrounded=_ungrounded_share(route, body, text))
        choice = payload["choices"][0]
        row.update(upstream="small-model", served_by=SERVED_BY_SMALL)
        self._record_ok(row, started, payload.get("model"), text, choice.get("finish_reason"), payload.get("usage"))
        self._observe("chat.completions", 200, started)
        self.metrics.increment(self.metrics.served, route.workload, SERVED_BY_SMALL)
        responder.send(200, data)
        return True

    async def _shadow(self, route: Route, body: dict, frontier_row: dict, frontier_text: str) -> None:
        """The small model answers a copy, after the caller has the frontier's answer; both are logged."""
        started = time.perf_counter()
        row = {**frontier_row, "uid": f"{_UID_PREFIX}{next(_uid_counter):016x}", "upstream": "small-model",
               "served_by": SERVED_BY_SHADOW, "model": route.small_model,
               "request_params": {**frontier_row["request_params"], "shadow_of": frontier_row["uid"]}}
        try:
            _, payload, text = await self._ask_small_model(route, body)
        except (OSError, asyncio.TimeoutError, ValueError, KeyError, IndexError, TypeError) as exc:
            self._watch(route, ok=False, latency_ms=(time.perf_counter() - started) * 1000)
            self._record_error(row, started, 502, f"small model failed in the shadow: {type(exc).__name__}: {exc}")
            return
        agreed, valid = agrees(text, frontier_text), route.valid_answer(text)
        self._watch(route, ok=True, latency_ms=(time.perf_counter() - started) * 1000, agreed=agreed, valid=valid,
                    ungrounded=_ungrounded_share(route, body, text))
        row["request_params"].update(agrees_with_frontier=agreed, valid_answer=valid)
        self._record_ok(row, started, payload.get("model"), text, payload["choices"][0].get("finish_reason"),
                        payload.get("usage"))
        self.metrics.increment(self.metrics.served, route.workload, SERVED_BY_SHADOW)

    def _watch(self, route: Route, *, ok: bool, latency_ms: float, agreed: bool | None = None,
               valid: bool = True, ungrounded: float | None = None) -> None:
        """Feed the workload's rollout monitor; step the route back when a threshold is crossed."""
        monitor = self._monitors.get(route.workload)
        if monitor is None:
            monitor = self._monitors[route.workload] = RolloutMonitor(self.config.rollback)
        monitor.observe(ok, latency_ms, agreed, valid, ungrounded=ungrounded)
        reason = monitor.breach()
        current = self.routes.routes.get(route.workload)
        if reason is None or current is None or current.mode != route.mode:
            return
        self.routes.roll_back(current.step_back(), reason)
        monitor.reset()
        self.metrics.increment(self.metrics.rollbacks, route.workload)

    async def _relay_stream(self, responder: Responder, answer: UpstreamResponse, row: dict, endpoint: str,
                            started: float, provider_headers: list[tuple[str, str]]) -> None:
        """Relay a stream as it arrives. Its deadline restarts with every chunk: a stream is cut when the provider
        goes quiet for ``stream_idle_timeout_s``, never for its length."""
        summary = _StreamSummary()
        task = asyncio.current_task()
        try:
            responder.start(200, "text/event-stream", [("cache-control", "no-cache"), *provider_headers])
            self._deadlines.add(task, self.config.stream_idle_timeout_s)
            async for chunk in answer.chunks():
                self._deadlines.add(task, self.config.stream_idle_timeout_s)
                summary.feed(chunk)
                await responder.write(chunk)
        except asyncio.CancelledError:
            if not self._deadlines.discard(task):
                raise
            task.uncancel()
            self._upstream_stream_broke(row, endpoint, started, f"timed out: no chunk for "
                                        f"{self.config.stream_idle_timeout_s:g}s", "".join(summary.parts))
            return
        except ClientDisconnected:
            self._record_error(row, started, 499, "client disconnected mid-stream", "".join(summary.parts))
            self._observe(endpoint, 499, started, "client_disconnect")
            raise
        except OSError as exc:
            self._upstream_stream_broke(row, endpoint, started, str(exc) or type(exc).__name__,
                                        "".join(summary.parts))
            return
        responder.end()
        self._record_ok(row, started, summary.model, "".join(summary.parts), summary.finish_reason, summary.usage)
        self._observe(endpoint, 200, started)

    def _upstream_stream_broke(self, row: dict, endpoint: str, started: float, reason: str,
                               partial: str | None = None) -> None:
        # The caller already has a 200 and part of the stream: the connection is cut (the server
        # closes an unfinished stream) and the row says what broke.
        self._record_error(row, started, 502, f"upstream stream broke off: {reason}", partial)
        self._observe(endpoint, 502, started, "upstream_stream")

    def _record_ok(self, row: dict, started: float, model: str | None, text: str | None,
                   finish_reason: str | None, usage: dict | None) -> None:
        usage = usage or {}
        prompt_tokens, completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
        price = self.config.price_for(model) or self.config.price_for(row["model"])
        row.update(
            model=model or row["model"], response_text=text, finish_reason=finish_reason,
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, status=STATUS_OK, status_code=200,
            error=None, latency_ms=(time.perf_counter() - started) * 1000,
            cost_usd=price.cost(prompt_tokens, completion_tokens) if price else None,
        )
        if row["cost_usd"] and row.get("served_by") != SERVED_BY_SHADOW:
            self.metrics.add(self.metrics.frontier_usd, row["cost_usd"], row["workload"],
                             row.get("served_by") or SERVED_BY_FRONTIER)
        self.recorder.submit(row)

    def _record_error(self, row: dict, started: float, status: int, message: str, partial: str | None = None) -> None:
        row.update(response_text=partial or None, finish_reason=None, prompt_tokens=None, completion_tokens=None,
                   status=STATUS_ERROR, status_code=status, error=message, cost_usd=None,
                   latency_ms=(time.perf_counter() - started) * 1000)
        self.recorder.submit(row)

    def _fail(self, responder: Responder, endpoint: str, row: dict, started: float, status: int, message: str,
              cause: str, passthrough: bytes | None = None, headers: list[tuple[str, str]] = ()) -> None:
        self._record_error(row, started, status, message)
        self._observe(endpoint, status, started, cause)
        if passthrough is not None and _is_openai_error(passthrough):
            responder.send(status, passthrough, extra=headers)
        else:
            responder.send(status, error_body(message, cause), extra=headers)

    def _refuse(self, endpoint: str, responder: Responder, error: GatewayError, cause: str) -> None:
        self.metrics.count(endpoint, error.status, cause)
        responder.send(error.status, error_body(str(error), error.code))

    def _observe(self, endpoint: str, status: int, started: float, cause: str | None = None) -> None:
        self.metrics.count(endpoint, status, cause, time.perf_counter() - started)


# What a caller needs from the provider's answer: when to retry, the id to quote to its support, its rate limits.
_PASSED_HEADERS = ("retry-after", "retry-after-ms", "x-request-id")
_PASSED_PREFIX = "x-ratelimit-"


def _ungrounded_share(route: Route, body: dict, answer: str) -> float | None:
    """For a JSON route, the share of the answer's values not in the request's messages; None otherwise."""
    if route.policy.kind != "json":
        return None
    missing, values = ungrounded(answer, prompt_text(body.get("messages")))
    return missing / values if values else None


def _provider_headers(headers: dict[str, str]) -> list[tuple[str, str]]:
    return [(name, value) for name, value in headers.items()
            if name in _PASSED_HEADERS or name.startswith(_PASSED_PREFIX)]


def _new_row(body: dict[str, Any], workload: str, endpoint: str, upstream: str) -> dict[str, Any]:
    """The log row of one call, before its answer is known."""
    return {
        "uid": f"{_UID_PREFIX}{next(_uid_counter):016x}", "workload": workload,
        "created_at": dt.datetime.now(dt.timezone.utc),
        "endpoint": endpoint, "request_messages": body.get("messages") or [{"role": "user", "content":
                                                                             str(body.get("prompt", ""))}],
        "request_params": {k: v for k, v in body.items() if k not in ("messages", "prompt")},
        "model": body.get("model"), "upstream": upstream, "served_by": SERVED_BY_FRONTIER,
    }


def _workload(request: Request, body: dict[str, Any], caller: ApiKey | None) -> str:
    header = request.headers.get(WORKLOAD_HEADER)
    if header:
        return header
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("workload"), str):
        return metadata["workload"]
    return caller.default_workload if caller is not None else DEFAULT_WORKLOAD


def _route_key(request: Request, body: dict[str, Any], fallback: str) -> str:
    """What keeps a caller on one side of a canary: the route-key header, else the body's ``user``."""
    key = request.headers.get(ROUTE_KEY_HEADER) or body.get("user")
    return key if isinstance(key, str) and key else fallback


def _is_openai_error(data: bytes) -> bool:
    try:
        return isinstance(json.loads(data).get("error"), dict)
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        return False


def _upstream_error_message(data: bytes, status: int) -> str:
    try:
        return f"upstream {status}: {json.loads(data)['error']['message']}"
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        return f"upstream {status}: {data[:200].decode(errors='replace')}"
