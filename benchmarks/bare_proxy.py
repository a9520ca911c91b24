"""The smallest aiohttp pass-through (records nothing): the ceiling the gateway is compared with.

    python benchmarks/bare_proxy.py UPSTREAM_URL PORT
"""

import sys

import aiohttp
import uvloop
from aiohttp import web


async def forward(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    async with request.app["session"].post(request.app["upstream"] + request.path.removeprefix("/v1"), data=body,
                                           headers={"Content-Type": "application/json"}) as upstream:
        data = await upstream.read()
        return web.Response(body=data, status=upstream.status, content_type=upstream.content_type)


async def open_session(app: web.Application) -> None:
    app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


async def close_session(app: web.Application) -> None:
    await app["session"].close()


def main() -> None:
    app = web.Application()
    app["upstream"] = sys.argv[1]
    app.router.add_post("/v1/chat/completions", forward)
    app.on_startup.append(open_session)
    app.on_cleanup.append(close_session)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), access_log=None, loop=uvloop.new_event_loop(),
                print=None)


if __name__ == "__main__":
    main()
