"""The gateway's HTTP side: aiohttp server in front of pooled aiohttp client connections.

aiohttp was chosen by measurement (benchmarks/gateway.py): on the 2-core machine a
pass-through with httpx reached 0.05 of direct throughput and one with aiohttp about 0.6.

What a caller sees when something goes wrong, always as an OpenAI-style error object:
401 unknown or revoked gateway key; 400 malformed JSON or an invalid workload name;
413 body over ``max_body_bytes``; 502 upstream unreachable (connection refused, reset);
504 upstream timed out; an upstream 4xx/5xx is passed through with its status.
Every one of these that reached the proxy step is recorded as a failed exchange.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from distillery.gateway.config import GatewayConfig
from distillery.gateway.keys import ApiKey, KeyStore
from distillery.gateway.recorder import Recorder
from distillery.logstore import STATUS_ERROR, STATUS_OK
from distillery.settings import DEFAULT_WORKLOAD, validate_workload

WORKLOAD_HEADER = "X-Distillery-Workload"
_KEY_CACHE_SECONDS = 5.0


def error_response(status: int, message: str, code: str) -> web.Response:
    body = {"error": {"message": message, "type": code, "param": None, "code": code}}
    return web.json_response(body, status=status)


class _Metrics:
    def __init__(self, recorder: Recorder):
        self.registry = CollectorRegistry()
        self.requests = Counter("distillery_gateway_requests", "Proxied requests", ["endpoint", "status"],
                                registry=self.registry)
        self.errors = Counter("distillery_gateway_errors", "Failed requests by cause", ["cause"],
                              registry=self.registry)
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
            payload = json.loads(data)
        except json.JSONDecodeError:
            return
        self.model = payload.get("model") or self.model
        self.usage = payload.get("usage") or self.usage
        for choice in payload.get("choices") or []:
            delta = choice.get("delta") or {}
            self.parts.append(delta.get("content") or choice.get("text") or "")
            self.finish_reason = choice.get("finish_reason") or self.finish_reason


class Gateway:
    def __init__(self, config: GatewayConfig, recorder: Recorder, keys: KeyStore):
        self.config = config
        self.recorder = recorder
        self.keys = keys
        self.metrics = _Metrics(recorder)
        self._key_cache: dict[str, tuple[ApiKey | None, float]] = {}
        self._session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        # Bodies are size-checked by the handler (to answer 413 as JSON); this is a backstop.
        app = web.Application(client_max_size=self.config.max_body_bytes + 1)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.prometheus)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, _app: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
        timeout = aiohttp.ClientTimeout(total=self.config.upstream_timeout_s)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)

    async def _close(self, _app: web.Application) -> None:
        if self._session:
            await self._session.close()
        await asyncio.get_running_loop().run_in_executor(None, self.recorder.stop)

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "log_store_up": self.recorder.database_up,
                                  "queue_depth": self.recorder.pending, "journal_backlog": self.recorder.journal_backlog})

    async def prometheus(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def models(self, request: web.Request) -> web.Response:
        caller = await self._authenticate(request)
        if isinstance(caller, web.Response):
            return caller
        data = [{"id": model, "object": "model", "owned_by": upstream.name}
                for upstream in self.config.upstreams.values() for model in upstream.models]
        return web.json_response({"object": "list", "data": data})

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._proxy(request, "chat.completions", "/chat/completions")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._proxy(request, "completions", "/completions")

    async def _authenticate(self, request: web.Request) -> ApiKey | web.Response | None:
        """The caller's key record, None when keys are not required, or a 401 response."""
        if not self.config.require_api_key:
            return None
        header = request.headers.get("Authorization", "")
        key = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if not key:
            return error_response(401, "missing gateway API key (Authorization: Bearer ...)", "invalid_api_key")
        cached = self._key_cache.get(key)
        now = time.monotonic()
        if cached is None or cached[1] < now:
            record = await asyncio.get_running_loop().run_in_executor(None, self.keys.lookup, key)
            cached = (record, now + _KEY_CACHE_SECONDS)
            self._key_cache[key] = cached
        if cached[0] is None:
            return error_response(401, "unknown or revoked gateway API key", "invalid_api_key")
        return cached[0]

    async def _proxy(self, request: web.Request, endpoint: str, path: str) -> web.StreamResponse:
        started = time.perf_counter()
        caller = await self._authenticate(request)
        if isinstance(caller, web.Response):
            return self._refuse(endpoint, caller, "auth")
        if (request.content_length or 0) > self.config.max_body_bytes:
            return self._too_large(endpoint)
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:  # a chunked body without Content-Length
            return self._too_large(endpoint)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return self._refuse(endpoint, error_response(400, f"request body is not valid JSON: {exc}",
                                                         "invalid_request_error"), "bad_request")
        if not isinstance(body, dict):
            return self._refuse(endpoint, error_response(400, "request body must be a JSON object",
                                                         "invalid_request_error"), "bad_request")
        workload = _workload(request, body, caller)
        try:
            validate_workload(workload)
        except ValueError as exc:
            return self._refuse(endpoint, error_response(400, str(exc), "invalid_request_error"), "bad_request")

        model = body.get("model")
        upstream = self.config.upstream_for(model)
        stream = bool(body.get("stream"))
        if stream and "stream_options" not in body:
            # Ask for the usage chunk so streamed calls are costed like the others.
            body["stream_options"] = {"include_usage": True}
            raw = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if upstream.api_key:
            headers["Authorization"] = f"Bearer {upstream.api_key}"
        row = {
            "uid": uuid.uuid4().hex, "workload": workload, "created_at": dt.datetime.now(dt.timezone.utc),
            "endpoint": endpoint, "request_messages": body.get("messages") or [{"role": "user", "content":
                                                                                 str(body.get("prompt", ""))}],
            "request_params": {k: v for k, v in body.items() if k not in ("messages", "prompt")},
            "model": model, "upstream": upstream.name,
        }
        assert self._session is not None
        try:
            async with self._session.post(upstream.base_url + path, data=raw, headers=headers) as upstream_response:
                if stream and upstream_response.status == 200:
                    return await self._relay_stream(request, upstream_response, row, endpoint, started)
                data = await upstream_response.read()
                status = upstream_response.status
        except asyncio.TimeoutError:
            return self._fail(endpoint, row, started, 504, f"upstream {upstream.name} timed out after "
                                                           f"{self.config.upstream_timeout_s:g}s", "upstream_timeout")
        except aiohttp.ClientError as exc:
            return self._fail(endpoint, row, started, 502, f"upstream {upstream.name} unreachable: {exc}",
                              "upstream_unreachable")

        if status >= 400:
            return self._fail(endpoint, row, started, status, _upstream_error_message(data, status),
                              "upstream_error", passthrough=data)
        try:
            payload = json.loads(data)
            choice = payload["choices"][0]
        except (json.JSONDecodeError, KeyError, IndexError, TypeError):
            return self._fail(endpoint, row, started, 502, "upstream returned an invalid completion", "upstream_invalid")
        message = choice.get("message") or {}
        self._record_ok(row, started, payload.get("model"), message.get("content", choice.get("text")),
                        choice.get("finish_reason"), payload.get("usage"))
        self._observe(endpoint, status, started)
        return web.Response(body=data, status=status, content_type="application/json")

    async def _relay_stream(self, request: web.Request, upstream_response: aiohttp.ClientResponse, row: dict,
                            endpoint: str, started: float) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream",
                                                           "Cache-Control": "no-cache"})
        await response.prepare(request)
        summary = _StreamSummary()
        try:
            async for chunk in upstream_response.content.iter_any():
                summary.feed(chunk)
                await response.write(chunk)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self._record_error(row, started, 502, f"upstream stream broke off: {exc}", "".join(summary.parts))
            self._observe(endpoint, 502, started, "upstream_stream")
            return response
        except ConnectionResetError:
            self._record_error(row, started, 499, "client disconnected mid-stream", "".join(summary.parts))
            self._observe(endpoint, 499, started, "client_disconnect")
            return response
        await response.write_eof()
        self._record_ok(row, started, summary.model, "".join(summary.parts), summary.finish_reason, summary.usage)
        self._observe(endpoint, 200, started)
        return response

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
        self.recorder.submit(row)

    def _record_error(self, row: dict, started: float, status: int, message: str, partial: str | None = None) -> None:
        row.update(response_text=partial or None, finish_reason=None, prompt_tokens=None, completion_tokens=None,
                   status=STATUS_ERROR, status_code=status, error=message, cost_usd=None,
                   latency_ms=(time.perf_counter() - started) * 1000)
        self.recorder.submit(row)

    def _fail(self, endpoint: str, row: dict, started: float, status: int, message: str, cause: str,
              passthrough: bytes | None = None) -> web.Response:
        self._record_error(row, started, status, message)
        self._observe(endpoint, status, started, cause)
        if passthrough is not None and _is_openai_error(passthrough):
            return web.Response(body=passthrough, status=status, content_type="application/json")
        return error_response(status, message, cause)

    def _too_large(self, endpoint: str) -> web.Response:
        message = f"request body over {self.config.max_body_bytes} bytes"
        return self._refuse(endpoint, error_response(413, message, "request_too_large"), "too_large")

    def _refuse(self, endpoint: str, response: web.Response, cause: str) -> web.Response:
        self.metrics.requests.labels(endpoint, str(response.status)).inc()
        self.metrics.errors.labels(cause).inc()
        return response

    def _observe(self, endpoint: str, status: int, started: float, cause: str | None = None) -> None:
        self.metrics.requests.labels(endpoint, str(status)).inc()
        self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        if cause:
            self.metrics.errors.labels(cause).inc()


def _workload(request: web.Request, body: dict[str, Any], caller: ApiKey | None) -> str:
    header = request.headers.get(WORKLOAD_HEADER)
    if header:
        return header
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("workload"), str):
        return metadata["workload"]
    if caller is not None and caller.default_workload:
        return caller.default_workload
    return DEFAULT_WORKLOAD


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
