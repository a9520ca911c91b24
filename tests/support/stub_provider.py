"""A fast fake provider for tests and benchmarks (not a model: canned answers), speaking OpenAI's chat and text
completions and Responses API, and Anthropic's Messages API, streamed and not.

The requested ``model`` picks the behaviour: ``fail-500`` answers 500, ``rate-limited`` answers 429
with ``Retry-After``, ``slow`` waits ``slow_seconds`` first, ``slow-stream`` streams five words
one second apart, ``stalled-stream`` streams one word and then nothing for five seconds, anything else
answers ``answer`` ("ok"; with chance 1 - ``agreement`` ``other_answer`` instead: a small-model stand-in whose
agreement with a frontier stub is planted; streamed when asked; as one token of log-probability ``ANSWER_LOGPROB`` when a request
asks for ``logprobs``). A request that offers tools is answered with a call of its first
function with ``tool_arguments`` (model ``parallel-tools``: two calls; ``bad-arguments``: arguments that are not
JSON). Every answer carries ``x-request-id`` and ``x-ratelimit-*`` headers, as OpenAI's do. The last Authorization
and x-api-key headers and request body seen are kept, to check what the gateway forwards.
"""

from __future__ import annotations

import asyncio
import random
import threading

from aiohttp import web

from distillery import wire
from distillery.gateway.protocols import anthropic_messages, openai_responses
from distillery.tasks import tool_spec

ANSWER = "ok"
USAGE = (10, 1)  # prompt and completion tokens of every answer
TOOL_ARGUMENTS = '{"queue": "billing", "priority": 2}'
ANSWER_LOGPROB = -0.01  # the answer's one token, when a request asks for log-probabilities (a confident answer)


class StubUpstream:
    def __init__(self, slow_seconds: float = 2.0, fail_every: int = 0, answer: str = ANSWER,
                 logprobs: bool = True):
        self.answer = answer  # what every completion says
        self.agreement = 1.0  # the share of chat answers that are ``answer``; the others are ``other_answer``
        self.other_answer = "other"
        self._random = random.Random(0)
        self.logprobs = logprobs  # whether it returns log-probabilities when asked (a server that never does: False)
        self.slow_seconds = slow_seconds
        self.fail_every = fail_every  # also fail every Nth call of any model, for benchmarks
        self.calls = 0
        self.last_authorization: str | None = None
        self.last_api_key: str | None = None
        self.last_anthropic_version: str | None = None
        self.last_body: dict | None = None
        self.tool_arguments = TOOL_ARGUMENTS
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        self.last_authorization = request.headers.get("Authorization")
        self.last_api_key = request.headers.get("x-api-key")
        self.last_anthropic_version = request.headers.get("anthropic-version")
        body = self.last_body = await request.json()
        # The model is echoed into the answer: a caller's odd one (a number past 64 bits, which orjson cannot write)
        # is answered under the stub's own name, as a provider names the model that answered.
        model = body.get("model") if isinstance(body.get("model"), str) else "stub"
        headers = {"x-request-id": f"req-stub-{self.calls}", "x-ratelimit-limit-requests": "500",
                   "x-ratelimit-remaining-requests": "0" if model == "rate-limited" else "499"}
        if model == "fail-500" or (self.fail_every and self.calls % self.fail_every == 0):
            return web.json_response(wire.error("stub upstream failure", "server_error"), status=500, headers=headers)
        if model == "rate-limited":
            return web.json_response(wire.error("Rate limit reached", "rate_limit_exceeded"), status=429,
                                     headers={**headers, "Retry-After": "7"})
        if model == "slow":
            await asyncio.sleep(self.slow_seconds)
        calls = self._tool_calls(body, model)
        if request.path.endswith("/responses"):
            whole = openai_responses.response(None if calls else self.answer, model, *USAGE, calls, body)
            return await self._answer(request, body, headers, whole, openai_responses)
        if request.path.endswith("/messages"):
            whole = anthropic_messages.message(None if calls else self.answer, model, *USAGE, calls)
            return await self._answer(request, body, headers, whole, anthropic_messages)
        if "chat" not in request.path:
            return web.json_response(wire.text_completion(self.answer, model, *USAGE), headers=headers)
        if calls:
            if not body.get("stream"):
                return web.json_response(wire.chat_completion(None, model, *USAGE, "tool_calls", calls),
                                         headers=headers)
            chunks = wire.chat_chunks([], model, *USAGE, "tool_calls", wire.wants_stream_usage(body), calls)
            return await self._stream(request, headers, b"".join(map(wire.sse_event, chunks)) + wire.SSE_DONE)
        text = self.answer if self.agreement >= 1 or self._random.random() < self.agreement else self.other_answer
        if not body.get("stream"):
            logprobs = ([wire.token_logprob(text, ANSWER_LOGPROB)] if body.get("logprobs") and self.logprobs
                        else None)
            return web.json_response(wire.chat_completion(text, model, *USAGE, logprobs=logprobs),
                                     headers=headers)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **headers})
        await response.prepare(request)
        words, pause = {"slow-stream": (["one ", "two ", "three ", "four ", "five"], 1.0),
                        "stalled-stream": (["one ", "two"], 5.0)}.get(model, ([text], 0.0))
        chunks = wire.chat_chunks(words, model, *USAGE, usage_chunk=wire.wants_stream_usage(body))
        for position, chunk in enumerate(chunks):
            if pause and 1 < position <= len(words):  # between the words
                await asyncio.sleep(pause)
            await response.write(wire.sse_event(chunk))
        await response.write(wire.SSE_DONE)
        await response.write_eof()
        return response

    def _tool_calls(self, body: dict, model: str) -> list | None:
        spec = tool_spec(body)
        if spec is None or spec.forced == "none":
            return None
        name = spec.forced if spec.forced not in (None, "required") else spec.functions[0][0]
        arguments = "{not json" if model == "bad-arguments" else self.tool_arguments
        return [wire.tool_call(name, arguments) for _ in range(2 if model == "parallel-tools" else 1)]

    async def _answer(self, request: web.Request, body: dict, headers: dict, whole: dict, protocol) -> web.StreamResponse:
        if not body.get("stream"):
            return web.json_response(whole, headers=headers)
        return await self._stream(request, headers, wire.typed_sse_events(protocol.stream_events(whole)))

    @staticmethod
    async def _stream(request: web.Request, headers: dict, events: bytes) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **headers})
        await response.prepare(request)
        await response.write(events)
        await response.write_eof()
        return response

    async def _start(self, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_post("/v1/completions", self._handle)
        app.router.add_post("/v1/responses", self._handle)
        app.router.add_post("/v1/messages", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.url = f"http://{host}:{self._runner.addresses[0][1]}/v1"

    def start(self, host: str = "127.0.0.1", port: int = 0) -> "StubUpstream":
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(host, port), self._loop).result(10)
        return self

    def serve_forever(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Run in this thread (a separate process for benchmarks); prints the URL when ready."""
        import uvloop

        self._loop = uvloop.new_event_loop()
        self._loop.run_until_complete(self._start(host, port))
        print(self.url, flush=True)
        self._loop.run_forever()

    def stop(self) -> None:
        """Close the server (its port refuses connections from then on); a second call does nothing."""
        if self._runner is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._runner = None
        self._loop.call_soon_threadsafe(self._loop.stop)


if __name__ == "__main__":
    import sys

    # python tests/support/stub_provider.py [FAIL_EVERY [ANSWER]]
    StubUpstream(fail_every=int(sys.argv[1]) if len(sys.argv) > 1 else 0,
                 answer=sys.argv[2] if len(sys.argv) > 2 else ANSWER).serve_forever()
