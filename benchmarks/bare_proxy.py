"""The smallest pass-through on the gateway's HTTP layer (records nothing): the ceiling the gateway is compared with.

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
            data = await answer.read()
        finally:
            answer.release()
        responder.send(answer.status, data, answer.headers.get("content-type", "application/json"))

    await HttpServer(forward, 1 << 20).start("127.0.0.1", port)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], int(sys.argv[2])))
