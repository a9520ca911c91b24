"""The gateway's HTTP layer on loopback, spoken to over raw sockets where a client library would hide the case."""

import asyncio
import json
import socket

import pytest
from support.stub_provider import StubUpstream

from distillery.gateway import BackgroundGateway, GatewayConfig
from distillery.gateway.http import HttpServer, Request, Responder, UpstreamPool

CHAT = json.dumps({"model": "stub-model", "messages": [{"role": "user", "content": "hi"}]}).encode()


@pytest.fixture
def gateway(tmp_path):
    stub = StubUpstream().start()
    config = GatewayConfig.single(stub.url, port=0, require_api_key=False, max_body_bytes=1024,
                                  journal_path=tmp_path / "journal.jsonl",
                                  log_store_url=f"sqlite:///{tmp_path / 'logs.db'}")
    with BackgroundGateway(config) as running:
        yield running
    stub.stop()


def _exchange(gateway, data: bytes) -> bytes:
    """Send raw bytes and read until the server closes (the last request says ``Connection: close``)."""
    host, port = gateway.url.removeprefix("http://").removesuffix("/v1").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(data)
        received = b""
        try:
            while chunk := conn.recv(65536):
                received += chunk
        except ConnectionResetError:  # the server closed with request bytes still unread: what came is the answer
            pass
        return received


def _post(path: str, body: bytes, *extra: str) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: x", "Content-Type: application/json", "Connection: close", *extra]
    if not any(h.lower().startswith("transfer-encoding") for h in extra):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def test_pipelined_requests_are_answered_in_order(gateway):
    answer = _exchange(gateway, _post("/v1/chat/completions", CHAT).replace(b"Connection: close", b"X-A: 1")
                       + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    first, second = answer.split(b"HTTP/1.1 ")[1:3]
    assert first.startswith(b"200") and b'"chat.completion"' in first
    assert second.startswith(b"200") and b'"log_store_up"' in second


def test_unknown_path_and_wrong_method_are_openai_errors(gateway):
    missing = _exchange(gateway, b"GET /v1/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert missing.startswith(b"HTTP/1.1 404") and json.loads(missing.split(b"\r\n\r\n")[1])["error"]["code"]
    wrong = _exchange(gateway, b"GET /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert wrong.startswith(b"HTTP/1.1 405")


def test_unparseable_request_gets_400_and_the_connection_closes(gateway):
    answer = _exchange(gateway, b"NOT HTTP AT ALL\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400") and b"connection: close" in answer.lower()


def test_chunked_body_over_the_limit_is_413(gateway):
    big = b"x" * 3000
    body = b"%x\r\n%b\r\n0\r\n\r\n" % (len(big), big)
    answer = _exchange(gateway, _post("/v1/chat/completions", body, "Transfer-Encoding: chunked"))
    assert answer.startswith(b"HTTP/1.1 413") and b"request_too_large" in answer


def test_expect_100_continue_is_honoured(gateway):
    answer = _exchange(gateway, _post("/v1/chat/completions", CHAT, "Expect: 100-continue"))
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200")


def test_upstream_pool_reuses_keep_alive_connections_and_survives_closing_ones():
    """One connection for sequential calls to a keep-alive upstream; a new one each time when it closes."""

    async def calls(keep_alive: bool, n: int) -> tuple[list[bytes], set]:
        peers = set()

        async def upstream(request: Request, responder: Responder) -> None:
            peers.add(request.peer)
            responder.send(200, b'{"path": "%b"}' % request.path.encode(), close=not keep_alive)

        server = HttpServer(upstream, 1024)
        pool = UpstreamPool(f"http://127.0.0.1:{await server.start('127.0.0.1', 0)}/v1")
        bodies = []
        for i in range(n):
            response = await pool.post(f"/call{i}", b"{}", {"Content-Type": "application/json"})
            bodies.append(await response.read())
            response.release()
            await asyncio.sleep(0.01)  # let a closing upstream's FIN arrive before the next call
        pool.close()
        await server.close()
        return bodies, peers

    bodies, peers = asyncio.run(calls(True, 5))
    assert bodies[4] == b'{"path": "/v1/call4"}' and len(peers) == 1
    bodies, peers = asyncio.run(calls(False, 5))
    assert len(bodies) == 5 and len(peers) == 5


def test_idle_keep_alive_connections_are_closed_and_shutdown_closes_the_rest():
    async def scenario() -> tuple[bytes, bytes, bytes]:
        async def ok(request: Request, responder: Responder) -> None:
            responder.send(200, b"{}")

        server = HttpServer(ok, 1024, keep_alive_s=0.2)
        port = await server.start("127.0.0.1", 0)
        request = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        idle_writer.write(request)
        answer = await idle_reader.readuntil(b"{}")
        closed_when_idle = await asyncio.wait_for(idle_reader.read(), timeout=10)  # b"" once the server closes
        busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", port)
        busy_writer.write(request)
        await busy_reader.readuntil(b"{}")
        await server.close()
        closed_on_shutdown = await asyncio.wait_for(busy_reader.read(), timeout=10)
        return answer, closed_when_idle, closed_on_shutdown

    answer, idle, shutdown = asyncio.run(scenario())
    assert answer.startswith(b"HTTP/1.1 200") and idle == b"" and shutdown == b""


async def _ok(request: Request, responder: Responder) -> None:
    responder.send(200, b"{}")


def test_at_the_default_settings_callers_that_never_finish_their_head_are_answered_408_and_closed():
    async def scenario() -> list[tuple[bytes, float]]:
        server = HttpServer(_ok, 1024)
        port = await server.start("127.0.0.1", 0)
        started = asyncio.get_running_loop().time()

        async def slow_caller() -> tuple[bytes, float]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # and never the rest
            try:
                answer = await asyncio.wait_for(reader.read(), timeout=20)
            except asyncio.TimeoutError:
                answer = b"still open"
            writer.close()
            return answer, asyncio.get_running_loop().time() - started

        callers = await asyncio.gather(*(slow_caller() for _ in range(300)))
        await server.close()
        return callers

    callers = asyncio.run(scenario())
    closed = [seconds for answer, seconds in callers if answer.startswith(b"HTTP/1.1 408")]
    assert len(closed) >= 0.95 * 300 and max(closed) < 20
    assert b"request head not received within 10s" in callers[0][0]


def test_a_body_that_stops_coming_gets_408_and_past_max_connections_a_new_one_gets_503():
    async def scenario() -> tuple[bytes, bytes, bytes]:
        server = HttpServer(_ok, 1024, body_timeout_s=0.5, head_timeout_s=30, max_connections=3)
        port = await server.start("127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        slow_body = await asyncio.wait_for(reader.read(), timeout=10)
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        extra_reader, _ = await asyncio.open_connection("127.0.0.1", port)
        refused = await asyncio.wait_for(extra_reader.read(), timeout=10)
        held[0][1].close()
        await asyncio.sleep(0.2)
        fresh_reader, fresh_writer = await asyncio.open_connection("127.0.0.1", port)
        fresh_writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        accepted = await asyncio.wait_for(fresh_reader.read(), timeout=10)
        await server.close()
        return slow_body, refused, accepted

    slow_body, refused, accepted = asyncio.run(scenario())
    assert slow_body.startswith(b"HTTP/1.1 408") and b"request body not received within 0.5s" in slow_body
    assert refused.startswith(b"HTTP/1.1 503") and json.loads(refused.split(b"\r\n\r\n")[1])["error"]["message"]
    assert accepted.startswith(b"HTTP/1.1 200")


def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(gateway):
    head = _post("/v1/chat/completions", b"").replace(b"Content-Length: 0", b"Content-Length: 50000000")
    answer = _exchange(gateway, head)  # no body follows: the answer must not wait for it
    assert answer.startswith(b"HTTP/1.1 413") and b"connection: close" in answer.lower()


def test_an_oversized_head_gets_431(gateway):
    answer = _exchange(gateway, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431")


def test_a_caller_that_leaves_before_its_stream_starts_is_recorded_once_as_499(gateway):
    import time

    from distillery.store import LogStore

    body = json.dumps({"model": "slow", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
    host, port = gateway.url.removeprefix("http://").removesuffix("/v1").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(_post("/v1/chat/completions", body))
    recorder = gateway.gateway.recorder
    deadline = time.monotonic() + 20  # the stub answers "slow" after 2 s
    while recorder.written < 1:
        assert time.monotonic() < deadline, "the exchange was not recorded"
        time.sleep(0.05)
    time.sleep(0.3)
    rows = LogStore(recorder.store.url).read("default")
    assert recorder.received == 1 and list(rows["status_code"]) == [499]
    assert rows.iloc[0]["error"] == "client disconnected mid-stream"
