"""The smallest correct pass-through on the gateway's HTTP layer (records nothing): the ceiling the gateway is
compared with. It passes on the provider's status and content type, and relays a stream chunk by chunk as each
arrives, as any proxy must (until 2026-12-05 it buffered whole streams: less work than a correct proxy does).

    python benchmarks/bare_proxy.py UPSTREAM_URL PORT
"""

import asyncio
import sys

import uvloop

from distillery.gateway.http import HttpServer, Request, Responder, UpstreamPool

HEADERS = {"Content-Type": "application/json"}


async def main(upstream_url: str, port: int) -> None:
    pool = UpstreamPool(upstream_url)

    async def forward(request: Request, responder: Responder) -> None:
        if request.method != "POST":  # GET /healthz, while the benchmark waits for it to come up
            return responder.send(200, b"{}")
        answer = await pool.post(request.path.removeprefix("/v1"), request.body, HEADERS)
        try:
            content_type = answer.headers.get("content-type", "application/json")
            if content_type.startswith("text/event-stream"):
                responder.start(answer.status, content_type)
                async for chunk in answer.chunks():
                    await responder.write(chunk)
                responder.end()
            else:
                responder.send(answer.status, await answer.read(), content_type)
        finally:
            answer.release()

    await HttpServer(forward, 1 << 20).start("127.0.0.1", port)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], int(sys.argv[2])))
