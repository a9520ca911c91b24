"""Forwarding a call to its provider: keep-alive pools per upstream, the provider's key, deadlines, stream relay.

Failures, as the gateway answers them: an upstream that refuses or drops the connection raises ``OSError`` (502),
one that does not answer within ``upstream_timeout_s`` raises ``UpstreamTimeout`` (504); a stream that goes quiet
for ``stream_idle_timeout_s`` or breaks raises ``StreamBroken`` once the caller already has its 200 (the
connection is then cut and the row says what broke). A caller that leaves mid-stream raises ``ClientDisconnected``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from distillery import wire
from distillery.gateway.config import GatewayConfig, Upstream
from distillery.gateway.http import Responder, UpstreamPool, UpstreamResponse
from distillery.gateway.protocols.anthropic_messages import DEFAULT_VERSION

# What a caller needs from the provider's answer: when to retry, the id to quote to its support, its rate limits
# (OpenAI's and Anthropic's names).
_PASSED_HEADERS = frozenset(("retry-after", "retry-after-ms", "x-request-id", "request-id"))
_PASSED_PREFIX = "x-ratelimit-"
_ANTHROPIC_PASSED_PREFIX = "anthropic-ratelimit-"


class UpstreamTimeout(Exception):
    pass


class StreamBroken(Exception):
    pass


class Deadlines:
    """Cancels requests that outlive their timeout, from one periodic check.

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


class Proxy:
    def __init__(self, config: GatewayConfig):
        self._config = config
        self._loop: asyncio.AbstractEventLoop | None = None  # the gateway's, known from its first call
        self._deadlines = Deadlines(config.upstream_timeout_s)
        self._pools = {name: UpstreamPool(upstream.base_url) for name, upstream in config.upstreams.items()}
        # Provider keys are read from the environment once, at start.
        self._headers = {name: _provider_headers(upstream) for name, upstream in config.upstreams.items()}

    async def send(self, upstream: str, path: str, body: bytes, stream: bool,
                   caller_headers: dict[str, str] | None = None) -> tuple[UpstreamResponse, bytes | None]:
        """The provider's answer and its whole body; for a stream answered 200, the body is None and the caller
        relays it with ``relay``. ``caller_headers`` are the caller's protocol headers to forward (already checked).
        Raises ``UpstreamTimeout`` or ``OSError``."""
        task = self._current_task()
        self._deadlines.add(task)
        headers = {**self._headers[upstream], **caller_headers} if caller_headers else self._headers[upstream]
        try:
            answer = await self._pools[upstream].post(path, body, headers)
            if stream and answer.status == 200:
                return answer, None
            try:
                return answer, await answer.read()
            finally:
                answer.release()
        except asyncio.CancelledError:
            if not self._deadlines.discard(task):
                raise
            task.uncancel()
            raise UpstreamTimeout(f"upstream {upstream} timed out after {self._config.upstream_timeout_s:g}s") from None
        finally:
            self._deadlines.discard(task)

    async def relay(self, answer: UpstreamResponse, responder: Responder, reader: Any, headers: list[tuple[str, str]],
                    complete: Callable[[], None]) -> None:
        """Relay a stream to the caller as it arrives, feeding ``reader``; ``complete()`` runs once, before the bytes
        that complete the answer (its ``[DONE]`` event, else its end) go out. The deadline restarts with every
        chunk: a stream is cut when the provider goes quiet for ``stream_idle_timeout_s``, never for its length."""
        idle_s = self._config.stream_idle_timeout_s
        task = self._current_task()
        try:
            responder.start(200, "text/event-stream", [("cache-control", "no-cache"), *headers])
            self._deadlines.add(task, idle_s)
            async for chunk in answer.chunks():
                self._deadlines.add(task, idle_s)
                reader.feed(chunk)
                if reader.done:
                    complete()
                await responder.write(chunk)
        except asyncio.CancelledError:
            if not self._deadlines.discard(task):
                raise
            task.uncancel()
            raise StreamBroken(f"timed out: no chunk for {idle_s:g}s") from None
        except OSError as exc:
            raise StreamBroken(str(exc) or type(exc).__name__) from exc
        finally:
            self._deadlines.discard(task)
            answer.release()
        if not reader.done:
            complete()
        responder.end()

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()

    def _current_task(self) -> asyncio.Task:
        # With the loop given, current_task skips get_running_loop(), which in Python 3.11 is a getpid() system
        # call: two a call were 17% of the bare proxy's system calls (strace, 2026-12-02).
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return asyncio.current_task(self._loop)


def _provider_headers(upstream: Upstream) -> dict[str, str]:
    if upstream.kind == "anthropic":
        return {"Content-Type": "application/json", "x-api-key": upstream.api_key,
                "anthropic-version": DEFAULT_VERSION}
    return {"Content-Type": "application/json",
            **({"Authorization": f"Bearer {upstream.api_key}"} if upstream.api_key else {})}


def passed_headers(headers: dict[str, str]) -> list[tuple[str, str]]:
    """The provider's headers a caller needs (retry, request id, rate limits), to pass through."""
    return [(name, value) for name, value in headers.items()
            if name in _PASSED_HEADERS or name[:12] == _PASSED_PREFIX or name[:20] == _ANTHROPIC_PASSED_PREFIX]


def upstream_error_message(data: bytes, status: int) -> str:
    """What a provider's error answer says, for the log row and the caller."""
    return f"upstream {status}: {wire.error_message(data) or data[:200].decode(errors='replace')}"
