"""HTTP/1.1 for the gateway: a server and an upstream connection pool on asyncio protocols + httptools.

Why not a framework: chosen by measurement (benchmarks/gateway.py, 2 cores shared with the
load generator and the stub). A pass-through written with httpx reached 0.05 of direct
throughput, one on aiohttp 0.35-0.43, one on these protocols 0.74-0.80; the gateway's own
work (auth, accounting, recording) has to fit in what is left. httptools is the parser
uvicorn uses; what is here is only the connection handling around it: keep-alive,
pipelined requests answered in order, body size limit, chunked streaming with back-pressure,
and a keep-alive pool of upstream connections (TLS for https upstreams).

Measured again against uvicorn itself, after the gateway's own work was cut down (benchmarks/gateway.py serves the
same ``Gateway`` handler on uvicorn with httptools and uvloop through benchmarks/gateway_on_uvicorn.py, in the same
interleaved rounds, 20,000 requests at concurrency 64, 2026-12-02, two runs): ``uvicorn_vs_hand_written`` 0.88 and
0.82 (3,814 against 3,844 and 3,163 against 3,560 requests/s), and uvicorn spent 179 and 215 µs of CPU a request
where this layer spent 152 and 157. The library costs a fifth to a third more CPU on the request path, and it
cannot hold what the gateway owes hostile callers: its httptools protocol arms no timer until a first response (a
connection that never finishes its head stays open for good) and bounds no head size; both would need a subclass of
its private protocol class. So this layer stays, with those protections (``head_timeout_s``, ``MAX_HEAD_BYTES``).
Per request it makes no system call but its reads and writes (the loop is kept, not looked up, since
``asyncio.get_running_loop`` is a ``getpid()`` in Python 3.11), and builds each upstream request head once per path.

Failure behaviour: a request that does not parse gets 400 and the connection is closed; a
head over ``MAX_HEAD_BYTES`` gets 431; a body over the limit is read and dropped and the
handler sees ``Request.too_large`` (it answers 413 in its own format). Slow or idle callers
cannot hold connections: a head not complete within ``head_timeout_s`` of the connection (or of
its first byte, on a kept-alive one), or a body not complete within ``body_timeout_s`` after it,
gets 408 and the connection is closed; past ``max_connections`` a new connection gets 503. Upstream: connection
refused/reset raise ``ConnectionError``/``OSError``; a reused keep-alive connection that the
upstream closed before answering is retried once on a new one, nothing else is retried.
"""

from __future__ import annotations

import asyncio
import http
import logging
import ssl
import time
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

import httptools

from distillery import wire

log = logging.getLogger(__name__)
MAX_HEAD_BYTES = 64 * 1024
_MAX_PIPELINED = 16  # requests queued on one connection before it stops reading


class ClientDisconnected(Exception):
    """The caller went away while its answer was being written.

    Not an OSError on purpose: handlers catch OSError as "the upstream failed", and a caller
    leaving must not be recorded as that too.
    """


@dataclass
class Request:
    method: str
    path: str  # without the query string
    headers: dict[str, str]  # names in lower case
    body: bytes
    too_large: bool  # the body went over the server's limit and was dropped
    peer: tuple  # the caller's (host, port)


Handler = Callable[[Request, "Responder"], Awaitable[None]]


def _status_line(status: int) -> str:
    try:
        return f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP/1.1 {status} Unknown"


_STATUS_LINES = {status: _status_line(status) for status in range(100, 600)}


def _head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [_STATUS_LINES.get(status) or _status_line(status)] + [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class Responder:
    """How a handler answers one request: ``send`` a whole body, or ``start`` / ``write`` / ``end`` a stream."""

    def __init__(self, connection: "_ServerConnection", keep_alive: bool):
        self._connection = connection
        self._keep_alive = keep_alive
        self.status = 0
        self.finished = False

    def send(self, status: int, body: bytes, content_type: str = "application/json", close: bool = False,
             extra: list[tuple[str, str]] = ()) -> None:
        """``close``: end the connection after this answer even if the caller asked to keep it."""
        self.status = status
        self._keep_alive = self._keep_alive and not close
        headers = [("content-type", content_type), ("content-length", str(len(body))), *extra]
        if not self._keep_alive:
            headers.append(("connection", "close"))
        self._connection.write(_head(status, headers) + body)
        self._finish()

    def start(self, status: int, content_type: str, extra: list[tuple[str, str]] = ()) -> None:
        self.status = status
        headers = [("content-type", content_type), ("transfer-encoding", "chunked"), *extra]
        if not self._keep_alive:
            headers.append(("connection", "close"))
        self._connection.write(_head(status, headers))

    async def write(self, chunk: bytes) -> None:
        """Raises ClientDisconnected once the caller has gone."""
        if chunk:
            self._connection.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            await self._connection.drain()

    def end(self) -> None:
        self._connection.write(b"0\r\n\r\n")
        self._finish()

    def _finish(self) -> None:
        self.finished = True
        if not self._keep_alive:
            self._connection.close()


class _ServerConnection(asyncio.Protocol):
    def __init__(self, handler: Handler, max_body_bytes: int, tasks: set[asyncio.Task],
                 connections: set["_ServerConnection"], max_connections: int, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._handler = handler
        self._max_body = max_body_bytes
        self._tasks = tasks
        self._connections = connections
        self._max_connections = max_connections
        self.last_active = 0.0
        # What the caller still owes: None, or ("head" | "body", since when); the server's sweep enforces it.
        self.reading: tuple[str, float] | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._queue: deque[tuple[Request, bool]] = deque()
        self._busy = False
        self._closed = False
        self._rejecting = False
        self._paused = False  # reading paused while too many pipelined requests wait
        self._can_write: asyncio.Future | None = None
        self._reset_message()

    def _reset_message(self) -> None:
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_size = 0
        self._head_size = 0
        self._too_large = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._peer = transport.get_extra_info("peername")
        if len(self._connections) >= self._max_connections:
            self._reject(503, f"the gateway has {self._max_connections} connections open: retry shortly")
            return
        self._connections.add(self)
        self.last_active = time.monotonic()
        self.reading = ("head", self.last_active)

    def data_received(self, data: bytes) -> None:
        if self._rejecting:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            if not self._rejecting:  # else a body over the limit: its 413 is queued, the connection closes after
                self._reject(431 if self._head_size > MAX_HEAD_BYTES else 400, "invalid request head")
        except httptools.HttpParserUpgrade:
            self._reject(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._reject(431 if self._head_size > MAX_HEAD_BYTES else 400, str(exc))

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._connections.discard(self)
        if self._can_write and not self._can_write.done():
            self._can_write.set_exception(ClientDisconnected("client disconnected"))

    def pause_writing(self) -> None:
        self._can_write = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._can_write and not self._can_write.done():
            self._can_write.set_result(None)
        self._can_write = None

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.reading is None:  # a kept-alive connection's next request: its head is due from now
            self.reading = ("head", time.monotonic())

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        length = self._headers.get("content-length", "")
        if length.isdigit() and int(length) > self._max_body:
            # Answer now and close, instead of reading a body we would drop.
            self._too_large = self._rejecting = True
            self._enqueue(keep_alive=False)
            self._transport.pause_reading()
            raise httptools.HttpParserCallbackError("body over the limit")  # stops this parse; see data_received
        self.reading = ("body", time.monotonic())
        if self._headers.get("expect", "").lower() == "100-continue":
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._max_body:
            self._too_large = True  # a chunked body without Content-Length: read to its end, dropped
        if not self._too_large:
            self._body.append(body)

    def on_message_complete(self) -> None:
        self.reading = None
        self._enqueue(self._parser.should_keep_alive())

    def _enqueue(self, keep_alive: bool) -> None:
        path = self._url.split(b"?", 1)[0].decode("latin-1")
        request = Request(self._parser.get_method().decode(), path, self._headers,
                          b"".join(self._body) if not self._too_large else b"", self._too_large, self._peer)
        self._queue.append((request, keep_alive))
        self._reset_message()
        if len(self._queue) > _MAX_PIPELINED:
            self._transport.pause_reading()
            self._paused = True
        if not self._busy:
            self._next()

    # internals
    def _count_head(self, size: int) -> None:
        self._head_size += size
        if self._head_size > MAX_HEAD_BYTES:
            raise httptools.HttpParserError("request head too large")

    @property
    def idle(self) -> bool:
        return not self._busy and not self._queue

    def _next(self) -> None:
        if not self._queue or self._closed:
            self._busy = False
            self.last_active = time.monotonic()
            return
        self._busy = True
        request, keep_alive = self._queue.popleft()
        task = self._loop.create_task(self._serve(request, keep_alive))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, request: Request, keep_alive: bool) -> None:
        responder = Responder(self, keep_alive)
        try:
            await self._handler(request, responder)
        except ClientDisconnected:
            self.close()
            return
        except Exception:
            log.exception("gateway handler failed on %s %s", request.method, request.path)
        if self._closed:
            return
        if not responder.status:
            responder.send(500, wire.error_bytes("internal gateway error", "server_error"))
        elif not responder.finished:  # a stream already under way cannot change its status: cut it off
            self.close()
            return
        if self._paused and len(self._queue) <= _MAX_PIPELINED:
            self._transport.resume_reading()
            self._paused = False
        self._next()

    def reject(self, status: int, message: str) -> None:
        """Answer ``status`` now (unless an answer is under way) and close."""
        if self._busy:
            self.close()
        else:
            self._reject(status, message)

    def _reject(self, status: int, message: str) -> None:
        if self._transport and not self._closed:
            body = wire.error_bytes(message, "invalid_request_error")
            self._transport.write(_head(status, [("content-type", "application/json"),
                                                 ("content-length", str(len(body))), ("connection", "close")]) + body)
        self.close()

    def write(self, data: bytes) -> None:
        if self._closed:
            raise ClientDisconnected("client disconnected")
        self._transport.write(data)

    async def drain(self) -> None:
        if self._can_write is not None:
            await self._can_write

    def close(self) -> None:
        if self._transport and not self._closed:
            self._closed = True
            self._transport.close()


class HttpServer:
    """Serves ``handler`` on host:port; ``close()`` stops accepting and waits for requests in flight.

    One sweep a second closes keep-alive connections idle for ``keep_alive_s`` and answers 408 to
    callers whose head or body is overdue (``head_timeout_s``, ``body_timeout_s``).
    """

    def __init__(self, handler: Handler, max_body_bytes: int, *, keep_alive_s: float = 75.0,
                 head_timeout_s: float = 10.0, body_timeout_s: float = 30.0, max_connections: int = 4096):
        self._handler = handler
        self._max_body = max_body_bytes
        self._keep_alive_s = keep_alive_s
        self._due = {"head": head_timeout_s, "body": body_timeout_s}
        self._max_connections = max_connections
        self._tasks: set[asyncio.Task] = set()
        self._connections: set[_ServerConnection] = set()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        """Listen; ``reuse_port``: beside the other workers of the gateway on the same port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _ServerConnection(self._handler, self._max_body, self._tasks, self._connections,
                                      self._max_connections, loop), host, port, reuse_address=True,
            reuse_port=reuse_port or None)
        self._sweeper = loop.call_later(self._sweep_interval, self._sweep)
        return self._server.sockets[0].getsockname()[1]

    @property
    def _sweep_interval(self) -> float:
        return min(1.0, self._keep_alive_s, *self._due.values())

    def _sweep(self) -> None:
        now = time.monotonic()
        for connection in list(self._connections):
            if connection.reading is not None:
                part, since = connection.reading
                if now - since > self._due[part]:
                    connection.reject(408, f"request {part} not received within {self._due[part]:g}s")
            elif connection.idle and connection.last_active < now - self._keep_alive_s:
                connection.close()
        self._sweeper = asyncio.get_running_loop().call_later(self._sweep_interval, self._sweep)

    async def close(self, timeout_s: float = 30.0) -> None:
        if self._sweeper:
            self._sweeper.cancel()
        if self._server:
            self._server.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)
        for connection in list(self._connections):
            connection.close()


class UpstreamResponse:
    """One upstream answer: ``status``, ``headers``, then the body by ``read()`` or ``chunks()``.

    Call ``release()`` when done (it is safe to call twice): a completely read answer on a
    keep-alive connection returns the connection to the pool, anything else closes it.
    """

    def __init__(self, connection: "_ClientConnection", pool: "UpstreamPool"):
        self._connection = connection
        self._pool = pool
        self.status = connection.status
        self.headers = connection.headers

    async def read(self) -> bytes:
        connection = self._connection
        while not connection.complete:
            await connection.wait()
        body = b"".join(connection.body)
        connection.body.clear()
        return body

    async def chunks(self) -> AsyncIterator[bytes]:
        connection = self._connection
        while True:
            if connection.body:
                chunk = b"".join(connection.body)
                connection.body.clear()
                yield chunk
            elif connection.complete:
                return
            else:
                await connection.wait()

    def release(self) -> None:
        if self._connection is not None:
            self._pool.release(self._connection)
            self._connection = None


class _ClientConnection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.error: Exception | None = None
        self._waiter: asyncio.Future | None = None
        self.reset()

    def reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.received_any = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"upstream sent an invalid HTTP response: {exc}"))

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete:
            # A body delimited by the connection closing ends here; anything else was cut off.
            if self.headers_done and "content-length" not in self.headers and \
                    "chunked" not in self.headers.get("transfer-encoding", ""):
                self.complete = True
                self._wake()
            else:
                self._fail(exc or ConnectionResetError("upstream closed the connection"))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self._wake()

    def on_message_complete(self) -> None:
        self.keep_alive = self._parser.should_keep_alive()
        self.complete = True
        self._wake()

    def _fail(self, exc: Exception) -> None:
        self.error = exc
        self.closed = True
        if self.transport:
            self.transport.close()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self) -> None:
        """Until something arrives; raises what broke the connection."""
        if self.error:
            raise self.error
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self.error:
            raise self.error


class UpstreamPool:
    """Keep-alive connections to one upstream base URL (http or https)."""

    def __init__(self, base_url: str, max_idle: int = 512):
        parts = urlsplit(base_url.rstrip("/"))
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"upstream URL must be http or https: {base_url!r}")
        self._tls = ssl.create_default_context() if parts.scheme == "https" else None
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (443 if self._tls else 80)
        self._prefix = parts.path
        self._host_header = parts.netloc
        self._idle: list[_ClientConnection] = []
        self._max_idle = max_idle
        self._heads: dict[tuple, bytes] = {}  # request heads by path and headers, built once

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> UpstreamResponse:
        """Send a POST and wait for the answer's status and headers."""
        key = (path, *headers.items())
        head = self._heads.get(key)
        if head is None:
            if len(self._heads) >= 256:  # callers' anthropic-version values are part of the key: keep it bounded
                self._heads.clear()
            lines = [f"POST {self._prefix}{path} HTTP/1.1", f"Host: {self._host_header}",
                     *(f"{name}: {value}" for name, value in headers.items()), "Content-Length: "]
            head = self._heads[key] = "\r\n".join(lines).encode("latin-1")
        message = b"%b%d\r\n\r\n%b" % (head, len(body), body)
        while True:
            connection, reused = await self._acquire()
            connection.transport.write(message)
            try:
                while not connection.headers_done:
                    await connection.wait()
            except (ConnectionError, OSError):
                connection.transport.close()
                if reused and not connection.received_any:
                    continue  # the upstream closed an idle connection as we reused it
                raise
            except BaseException:  # a timeout or cancellation mid-request: the connection is unusable
                connection.transport.close()
                raise
            return UpstreamResponse(connection, self)

    async def _acquire(self) -> tuple[_ClientConnection, bool]:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                connection.reset()
                return connection, True
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(
            lambda: _ClientConnection(loop), self._host, self._port, ssl=self._tls,
            server_hostname=self._host if self._tls else None)
        return connection, False

    def release(self, connection: _ClientConnection) -> None:
        if connection.complete and connection.keep_alive and not connection.closed \
                and len(self._idle) < self._max_idle:
            self._idle.append(connection)
        elif connection.transport and not connection.closed:
            connection.transport.close()

    def close(self) -> None:
        for connection in self._idle:
            if connection.transport:
                connection.transport.close()
        self._idle.clear()
