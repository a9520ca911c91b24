"""The gateway's request handler (the real ``Gateway``: auth, routes, recording) served by uvicorn instead of
the hand-written HTTP layer, for benchmarks/gateway.py to measure both in the same run.

    python benchmarks/gateway_on_uvicorn.py UPSTREAM_URL PORT

uvicorn runs with httptools and uvloop, as fast as it goes; the handler sees the same ``Request`` and a
responder with the same methods, bridged to a raw ASGI callable. SIGTERM stops it and flushes the recorder (at the
ASGI lifespan's shutdown: uvicorn re-raises the signal once it has stopped, so no code after ``uvicorn.run`` runs).
"""

import asyncio
import sys

import uvicorn

from distillery.gateway import GatewayConfig, build_gateway
from distillery.gateway.http import Request
from distillery.settings import home

MAX_BODY = 1 << 20


class AsgiResponder:
    """``http.Responder``'s methods over ASGI messages (sent in order, the synchronous ones on the next await)."""

    def __init__(self, send):
        self._send = send
        self._pending: list[dict] = []
        self.status = 0
        self.finished = False

    def send(self, status: int, body: bytes, content_type: str = "application/json", close: bool = False,
             extra: list[tuple[str, str]] = ()) -> None:
        self.status, self.finished = status, True
        headers = [("content-type", content_type), ("content-length", str(len(body))), *extra]
        self._pending += [_start(status, headers), {"type": "http.response.body", "body": body}]

    def start(self, status: int, content_type: str, extra: list[tuple[str, str]] = ()) -> None:
        self.status = status
        self._pending.append(_start(status, [("content-type", content_type), *extra]))

    async def write(self, chunk: bytes) -> None:
        await self.flush()
        await self._send({"type": "http.response.body", "body": chunk, "more_body": True})

    def end(self) -> None:
        self.finished = True
        self._pending.append({"type": "http.response.body", "body": b""})

    async def flush(self) -> None:
        while self._pending:
            await self._send(self._pending.pop(0))


def _start(status: int, headers: list[tuple[str, str]]) -> dict:
    return {"type": "http.response.start", "status": status,
            "headers": [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]}


def asgi_app(gateway):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":  # at shutdown, flush the recorder as the gateway's own server does
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await gateway.finish_shadows()
            await asyncio.get_running_loop().run_in_executor(None, gateway.close)
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        too_large = len(body) > MAX_BODY
        request = Request(scope["method"], scope["path"], headers, b"" if too_large else body, too_large,
                          scope.get("client"))
        responder = AsgiResponder(send)
        await gateway.handle(request, responder)
        await responder.flush()

    return app


def main(upstream_url: str, port: int) -> None:
    gateway = build_gateway(GatewayConfig.single(upstream_url, port=port, require_api_key=False,
                                                 max_body_bytes=MAX_BODY,
                                                 journal_path=home() / "gateway-journal-uvicorn.jsonl"))
    uvicorn.run(asgi_app(gateway), host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                lifespan="on", log_level="warning", access_log=False)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
