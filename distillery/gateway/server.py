"""Starting the gateway: in the foreground (`distillery gateway`) or on a background thread."""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web

from distillery.gateway.app import Gateway
from distillery.gateway.config import GatewayConfig
from distillery.gateway.keys import KeyStore
from distillery.gateway.recorder import Recorder
from distillery.logstore import LogStore


def build_gateway(config: GatewayConfig) -> Gateway:
    store = LogStore(config.log_store_url)
    store.upgrade()
    recorder = Recorder(store, config.journal_path, queue_size=config.queue_size, batch_size=config.batch_size,
                        flush_interval_s=config.flush_interval_s, retry_interval_s=config.retry_interval_s)
    return Gateway(config, recorder.start(), KeyStore(store))


def _event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # measurably faster on the request path; optional
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def serve_forever(config: GatewayConfig) -> None:
    gateway = build_gateway(config)
    web.run_app(gateway.app(), host=config.host, port=config.port, access_log=None,
                loop=_event_loop(), print=lambda _: None, shutdown_timeout=30)


class BackgroundGateway:
    """The gateway on its own thread and event loop, for the demo and the tests. ``stop()`` flushes."""

    def __init__(self, config: GatewayConfig):
        self.gateway = build_gateway(config)
        self._config = config
        self._loop = _event_loop()
        self._runner = web.AppRunner(self.gateway.app(), access_log=None)
        self._thread = threading.Thread(target=self._loop.run_forever, name="gateway", daemon=True)
        self.url = ""

    def start(self) -> "BackgroundGateway":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    async def _start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._config.host, self._config.port)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://{self._config.host}:{port}/v1"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> "BackgroundGateway":
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()
