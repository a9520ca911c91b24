"""The gateway's handling of one call: its key, its workload, who answers it, its log row, its metrics.

The HTTP layer under it is ``http`` (why hand-written: see there); the wire protocols are in ``protocols``, the
provider side in ``proxy``, who answers a routed call in ``cutover`` (the small model's client in ``small_model``),
what follows a routed call's answer in ``watch``, the log row in ``rows``.

What a caller sees when something goes wrong, always as an error object of its protocol:
401 unknown or revoked gateway key; 403 a workload outside the key's scope (recorded as an error under
the key's default workload, so it never becomes training data or a new workload); 400 malformed JSON or
an invalid workload name; 413 body over ``max_body_bytes``; 404/405 unknown path or method, 404 a protocol with no
upstream of its kind configured (``/v1/messages`` without an ``anthropic`` upstream); 502 upstream
unreachable (connection refused, reset, invalid HTTP) or an answer that is not a completion; 504 upstream
timed out; an upstream 4xx/5xx is passed through with its status. Every one of these that reached the
proxy step is recorded as a failed exchange, before its answer is sent.

Per call, in order: the key (looked up in the database once per ``key_cache_ttl_s``, off the event loop), the body,
the route (in memory, ``routing.RouteTable``), then the provider, or, on a routed workload, one pass through the
cut-over (the small model or the provider); the row is completed and recorded before the answer goes out, so a call
whose caller has its answer is in the journal even if the process dies; the metrics and the watch come after the
answer.

Where a call's CPU goes (benchmarks/gateway.py's CPU per request, and py-spy on the running gateway, 20,000
requests at 64 concurrent, 2026-12-02). Before this stage took its present form: 217 µs a call against the bare
pass-through's 89 on the same HTTP layer; of the 128 more, ~80 were the recorder (a queue handed row by row to its
writer thread: the queue's lock and condition, the writer woken per row, the GIL handed back and forth; see
``distillery.capture.recorder``) and ~16 the Prometheus metrics (locks and labelled children; see ``metrics``). Now:
148-157 µs against 79-91. The event loop's share is ~127, of which this module's own work (the body, the row, the
answer's JSON, the provider headers, the journal line) is ~35 and relaying streams ~9 on average (every chunk a
write, as it arrives); the writer thread spends ~21 a row on the other core.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from typing import Any

import cachetools
import orjson
from prometheus_client import generate_latest

from distillery import wire
from distillery.capture import Recorder
from distillery.gateway.config import GatewayConfig, Upstream
from distillery.gateway.cutover import Cutover
from distillery.gateway.http import ClientDisconnected, Request, Responder
from distillery.gateway.keys import ApiKey, KeyStore
from distillery.gateway.metrics import GatewayMetrics, WorkerShare
from distillery.gateway.protocols import CHAT_COMPLETIONS, COMPLETIONS, MESSAGES, RESPONSES, WireProtocol
from distillery.gateway.proxy import Proxy, StreamBroken, UpstreamTimeout, passed_headers, upstream_error_message
from distillery.gateway.rows import Rows
from distillery.gateway.small_model import SmallModel
from distillery.gateway.watch import AskFrontier, Watch
from distillery.routing import RouteStore, RouteTable
from distillery.settings import DEFAULT_WORKLOAD, validate_workload

WORKLOAD_HEADER = "x-distillery-workload"


class GatewayError(Exception):
    """Answered to the caller as an error object with this status; ``cause`` labels the error metric."""

    def __init__(self, status: int, message: str, code: str, cause: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.cause = cause


class Gateway:
    def __init__(self, config: GatewayConfig, recorder: Recorder, keys: KeyStore, routes: RouteStore | None = None,
                 share: WorkerShare | None = None):
        self.config = config
        self.recorder = recorder
        self.keys = keys
        self.metrics = GatewayMetrics(recorder, share)
        self.rows = Rows(config, recorder, self.metrics)
        self.proxy = Proxy(config)
        self.routes = RouteTable(routes, config.route_refresh_s, config.autopilot)
        self.small_model = SmallModel(config.small_timeout_s)
        self.watch = Watch(self.routes, self.small_model, config, self.rows, self.metrics)
        self.cutover = Cutover(self.small_model, self.watch, self.rows, self.metrics)
        # The configured upstreams' priced models, each owned by its upstream; "created" is the gateway's start.
        self._model_list = wire.model_list([(model, upstream.name) for upstream in config.upstreams.values()
                                            for model in upstream.models], created=int(time.time()))
        self._key_cache: cachetools.TTLCache[str, ApiKey | None] = cachetools.TTLCache(
            config.key_cache_size, config.key_cache_ttl_s)
        self._endpoints = {
            "/v1/chat/completions": ("POST", functools.partial(self._call, CHAT_COMPLETIONS)),
            "/v1/completions": ("POST", functools.partial(self._call, COMPLETIONS)),
            "/v1/responses": ("POST", functools.partial(self._call, RESPONSES)),
            "/v1/messages": ("POST", functools.partial(self._call, MESSAGES)),
            "/v1/models": ("GET", self.models),
            "/healthz": ("GET", self.healthz),
            "/metrics": ("GET", self.prometheus),
        }

    async def handle(self, request: Request, responder: Responder) -> None:
        endpoint = self._endpoints.get(request.path.rstrip("/") or "/")
        if endpoint is None:
            responder.send(404, wire.error_bytes(f"no route {request.path}", "not_found"))
        elif request.method != endpoint[0]:
            responder.send(405, wire.error_bytes(f"{request.path} takes {endpoint[0]}", "method_not_allowed"))
        else:
            await endpoint[1](request, responder)

    async def finish_shadows(self, timeout_s: float = 10) -> None:
        """Let shadow calls still in flight end (and be recorded) before the gateway closes."""
        await self.watch.finish(timeout_s)

    def close(self) -> None:
        """After the HTTP server stopped: drop upstream connections, flush the recorder."""
        self.proxy.close()
        self.small_model.close()
        self.recorder.stop()

    async def healthz(self, _request: Request, responder: Responder) -> None:
        responder.send(200, orjson.dumps({"status": "ok", "log_store_up": self.recorder.database_up,
                                          "queue_depth": self.recorder.pending,
                                          "journal_backlog": self.recorder.journal_backlog}))

    async def prometheus(self, _request: Request, responder: Responder) -> None:
        responder.send(200, generate_latest(self.metrics.registry), "text/plain; version=0.0.4; charset=utf-8")

    async def models(self, request: Request, responder: Responder) -> None:
        try:
            await self._authenticate(request)
        except GatewayError as exc:
            return self._refuse(CHAT_COMPLETIONS, "models", responder, exc)
        responder.send(200, orjson.dumps(self._model_list))

    async def _call(self, protocol: WireProtocol, request: Request, responder: Responder) -> None:
        started = time.perf_counter()
        try:
            caller = await self._authenticate(request)
            body, workload = self._parse(request, caller)
            upstream = self._upstream(protocol, body)
        except GatewayError as exc:
            return self._refuse(protocol, protocol.endpoint, responder, exc)
        if caller is not None and not caller.may_write(workload):
            # Recorded, as an error under the key's own default workload: it never becomes training data
            # and never creates the foreign workload (a Dagster partition).
            row = self.rows.new(body, protocol, caller.default_workload, upstream.name)
            row["request_params"]["refused_workload"] = workload
            message = f"gateway key {caller.name!r} may not write to workload {workload!r} (its scope: {caller.scope})"
            return self._fail(protocol, responder, row, started, 403, message, "permission_denied")
        row = self.rows.new(body, protocol, workload, upstream.name)
        route = self.routes.get(workload) if protocol.small_model_may_answer else None
        if route is None:
            await self._frontier(protocol, upstream, request, body, row, responder, started)
        else:
            await self.cutover.serve(
                route, protocol, request, body, row, responder, started,
                functools.partial(self._frontier, protocol, upstream, request, body, row, responder, started),
                self._frontier_copy(protocol, upstream, body, request))

    async def _frontier(self, protocol: WireProtocol, upstream: Upstream, request: Request, body: dict[str, Any],
                        row: dict, responder: Responder, started: float) -> wire.Answer | None:
        """Answer the caller from the provider: its answer, or None when the caller got an error instead."""
        try:
            answer, data = await self.proxy.send(upstream.name, protocol.upstream_path,
                                                 protocol.upstream_body(body, request.body), bool(body.get("stream")),
                                                 _anthropic_headers(request) if upstream.kind == "anthropic" else None)
        except UpstreamTimeout as exc:
            return self._fail(protocol, responder, row, started, 504, str(exc), "upstream_timeout")
        except OSError as exc:  # ConnectionError and refused connections are OSErrors
            return self._fail(protocol, responder, row, started, 502, f"upstream {upstream.name} unreachable: "
                              f"{exc or type(exc).__name__}", "upstream_unreachable")
        headers = passed_headers(answer.headers)
        if data is None:
            return await self._relay(protocol, answer, responder, row, started, headers)
        if answer.status >= 400:
            return self._fail(protocol, responder, row, started, answer.status,
                              upstream_error_message(data, answer.status), "upstream_error", passthrough=data,
                              headers=headers)
        try:
            result = protocol.answer(orjson.loads(data))
        except (orjson.JSONDecodeError, wire.WireError):
            return self._fail(protocol, responder, row, started, 502, "upstream returned an invalid completion",
                              "upstream_invalid")
        self.rows.ok(row, started, result)
        responder.send(answer.status, data, extra=headers)
        self.metrics.count(protocol.endpoint, answer.status, seconds=time.perf_counter() - started)
        return result

    async def _relay(self, protocol: WireProtocol, answer, responder: Responder, row: dict, started: float,
                     headers: list[tuple[str, str]]) -> wire.Answer | None:
        reader = protocol.stream_reader()
        completed = False

        def complete() -> None:  # before the caller has the answer's last event
            nonlocal completed
            if not completed:
                completed = True
                self.rows.ok(row, started, reader.answer)

        try:
            await self.proxy.relay(answer, responder, reader, headers, complete)
        except StreamBroken as exc:
            # The caller already has a 200 and part of the stream: the connection is cut (the server
            # closes an unfinished stream) and the row says what broke, unless the answer was whole already.
            if not completed:
                self.rows.error(row, started, 502, f"upstream stream broke off: {exc}", reader.answer.text)
            self.metrics.count(protocol.endpoint, 502, "upstream_stream", time.perf_counter() - started)
            return None
        except ClientDisconnected:
            if not completed:
                self.rows.error(row, started, 499, "client disconnected mid-stream", reader.answer.text)
            self.metrics.count(protocol.endpoint, 499, "client_disconnect", time.perf_counter() - started)
            raise
        self.metrics.count(protocol.endpoint, 200, seconds=time.perf_counter() - started)
        return reader.answer

    def _frontier_copy(self, protocol: WireProtocol, upstream: Upstream, body: dict[str, Any],
                       request: Request) -> AskFrontier:
        """How to ask the frontier for a copy of this call later (not streamed), for a cascade's audit."""
        headers = _anthropic_headers(request) if upstream.kind == "anthropic" else None

        async def ask() -> tuple[str, wire.Answer]:
            copy = {key: value for key, value in body.items() if key not in ("stream", "stream_options")}
            answer, data = await self.proxy.send(upstream.name, protocol.upstream_path, orjson.dumps(copy), False,
                                                 headers)
            if answer.status >= 400:
                raise ValueError(upstream_error_message(data, answer.status))
            return upstream.name, protocol.answer(orjson.loads(data))

        return ask

    def _upstream(self, protocol: WireProtocol, body: dict[str, Any]) -> Upstream:
        upstream = self.config.upstream_for(body.get("model"), protocol.upstream_kind)
        if upstream is None:
            raise GatewayError(404, f"this gateway has no {protocol.upstream_kind} upstream for {protocol.endpoint} "
                               f"calls: add one with kind = \"{protocol.upstream_kind}\" to its config", "not_found",
                               "no_upstream")
        return upstream

    async def _authenticate(self, request: Request) -> ApiKey | None:
        """The caller's key record, or None when keys are not required; GatewayError 401 otherwise."""
        if not self.config.require_api_key:
            return None
        header = request.headers.get("authorization", "")
        # Anthropic's SDK sends its key as x-api-key
        key = header[7:].strip() if header[:7].lower() == "bearer " else request.headers.get("x-api-key", "").strip()
        if not key:
            raise GatewayError(401, "missing gateway API key (Authorization: Bearer ..., or x-api-key)",
                               "invalid_api_key", "auth")
        if key in self._key_cache:
            record = self._key_cache[key]
        else:
            record = self._key_cache[key] = await asyncio.get_running_loop().run_in_executor(
                None, self.keys.lookup, key)
        if record is None:
            raise GatewayError(401, "unknown or revoked gateway API key", "invalid_api_key", "auth")
        return record

    def _parse(self, request: Request, caller: ApiKey | None) -> tuple[dict, str]:
        """The request body and its workload; GatewayError 413/400 when the request is unusable."""
        if request.too_large:
            raise GatewayError(413, f"request body over {self.config.max_body_bytes} bytes", "request_too_large",
                               "too_large")
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError as exc:
            raise GatewayError(400, f"request body is not valid JSON: {exc}", "invalid_request_error",
                               "bad_request") from exc
        if not isinstance(body, dict):
            raise GatewayError(400, "request body must be a JSON object", "invalid_request_error", "bad_request")
        workload = _workload(request, body, caller)
        try:
            validate_workload(workload)
        except ValueError as exc:
            raise GatewayError(400, str(exc), "invalid_request_error", "bad_request") from exc
        return body, workload

    def _fail(self, protocol: WireProtocol, responder: Responder, row: dict, started: float, status: int,
              message: str, cause: str, passthrough: bytes | None = None,
              headers: list[tuple[str, str]] = ()) -> None:
        """Record a failed call, then answer it: the provider's own error object when it sent one."""
        self.rows.error(row, started, status, message)
        answer = passthrough if passthrough is not None and wire.error_message(passthrough) is not None \
            else protocol.error(message, cause)
        responder.send(status, answer, extra=headers)
        self.metrics.count(protocol.endpoint, status, cause, time.perf_counter() - started)

    def _refuse(self, protocol: WireProtocol, endpoint: str, responder: Responder, error: GatewayError) -> None:
        responder.send(error.status, protocol.error(str(error), error.code))
        self.metrics.count(endpoint, error.status, error.cause)


_ANTHROPIC_HEADERS = {"anthropic-version": re.compile(r"\d{4}-\d{2}-\d{2}"),
                      "anthropic-beta": re.compile(r"[A-Za-z0-9._,-]{1,200}")}


def _anthropic_headers(request: Request) -> dict[str, str] | None:
    """The caller's Anthropic headers the provider must see (its API version, beta features), when well formed; a
    malformed one is left out, so the provider's default applies."""
    passed = {name: value for name, pattern in _ANTHROPIC_HEADERS.items()
              if (value := request.headers.get(name)) and pattern.fullmatch(value)}
    return passed or None


def _workload(request: Request, body: dict[str, Any], caller: ApiKey | None) -> str:
    header = request.headers.get(WORKLOAD_HEADER)
    if header:
        return header
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("workload"), str):
        return metadata["workload"]
    return caller.default_workload if caller is not None else DEFAULT_WORKLOAD
