"""The gateway's client of the small-model server: what a routed call is asked as, and what its answer says.

Used by the cut-over (the small model answering a caller) and by the watch (a shadow copy). Each call is decoded under
its route's policy: sent as vLLM's ``structured_outputs``, narrowed to the call's own tools on a tool-call route, and,
on a grounded route, as the grammar of the call's own user text (one without any is decoded under the schema alone,
and its row says so).

A route whose small model is a classifier served by vLLM (``small_api`` classify) is asked through vLLM's own
``POST /classify`` (at the server's root, beside ``/v1``): the text a classifier reads of the call
(``students.classifier_text``), cut to the model's length as evaluation cuts it (``truncate_prompt_tokens`` -1: the
server's ``--max-model-len``, set to the student's ``max_seq_len`` at deploy). Its answer becomes the chat completion
the local model server would send: the most probable label, with that label's log-probability as its one token's.
"""

from __future__ import annotations

import asyncio
import functools
import math
from typing import Any

import orjson

from distillery import wire
from distillery.gateway.http import UpstreamPool
from distillery.gateway.protocols import WireProtocol
from distillery.gateway.proxy import upstream_error_message
from distillery.routing import Route
from distillery.students import classifier_text
from distillery.tasks import DecodingPolicy, ToolSpec, tool_calls_of

# What a failed small-model call raises: the caller then gets the frontier's answer.
SMALL_MODEL_FAILURES = (OSError, asyncio.TimeoutError, ValueError, KeyError, IndexError, TypeError)
_JSON_HEADERS = {"Content-Type": "application/json"}


class SmallModel:
    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self._pools: dict[str, UpstreamPool] = {}

    @staticmethod
    def request(route: Route, protocol: WireProtocol, body: dict[str, Any], row: dict) -> tuple[DecodingPolicy, dict]:
        """The policy this call is answered under and the small model's request for it."""
        if route.small_api == wire.CLASSIFY_API:
            text = classifier_text(protocol.small_model_request(body).get("messages"))
            return route.policy, wire.classify_request(route.small_model, text)
        if route.policy.tool_calls:
            policy, constraint = _tool_policy(route.policy, protocol.tools(body))
            return policy, {**protocol.small_model_request(body), "model": route.small_model, **constraint}
        request = {**protocol.small_model_request(body), **route.small_model_request}
        if route.policy.copied_fields:
            grammar, note = route.policy.request_grammar(request.get("messages"))
            if grammar:
                request["structured_outputs"] = {"grammar": grammar}
            else:
                row["request_params"] = {**row["request_params"], "distillery_grounding": note}
        return route.policy, request

    async def ask(self, route: Route, request: dict[str, Any]) -> tuple[bytes, wire.Answer, list[float] | None]:
        """The small model's raw answer, what it says, and its chosen tokens' log-probabilities (when the route asked
        for them); raises one of ``SMALL_MODEL_FAILURES`` on any failure."""
        classify = route.small_api == wire.CLASSIFY_API
        base_url = wire.classify_base_url(route.small_url) if classify else route.small_url
        pool = self._pools.get(base_url)
        if pool is None:
            pool = self._pools[base_url] = UpstreamPool(base_url)
        answer = await asyncio.wait_for(pool.post("/classify" if classify else "/chat/completions",
                                                  orjson.dumps(request), _JSON_HEADERS), self.timeout_s)
        try:
            data = await asyncio.wait_for(answer.read(), self.timeout_s)
        finally:
            answer.release()
        if answer.status != 200:
            raise ValueError(upstream_error_message(data, answer.status))
        payload = orjson.loads(data)
        if classify:
            payload = classification_as_chat(payload, route.small_model)
            data = orjson.dumps(payload)
        result = wire.answer_of(payload)
        if not isinstance(result.text, str):
            raise ValueError("the small model's completion has no text")
        return data, result, wire.token_logprobs_of(payload) if route.cascade else None

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()


def classification_as_chat(payload: dict, model: str) -> dict:
    """vLLM's classify answer as the chat completion the local model server sends for a classifier: the label, its
    log-probability as the one token's. WireError (one of ``SMALL_MODEL_FAILURES``) when it is not one."""
    label, probability = wire.classification_of(payload)
    prompt_tokens = (payload.get("usage") or {}).get("prompt_tokens", 0)
    return wire.chat_completion(label, model, prompt_tokens, 1,
                                logprobs=[wire.token_logprob(label, math.log(probability))])


@functools.lru_cache(maxsize=256)
def _tool_policy(policy: DecodingPolicy, spec: ToolSpec | None) -> tuple[DecodingPolicy, dict]:
    """A tool-call policy narrowed to a request's tools, and its ``structured_outputs``; computed once per set of
    tools (a workload's calls mostly offer the same)."""
    narrowed = policy.for_request(spec)
    constraint = narrowed.structured_outputs()
    return narrowed, {"structured_outputs": constraint} if constraint else {}


def as_tool_calls(answer: wire.Answer) -> wire.Answer:
    """The small model's tool-call answer as the function calls a caller gets (new ids, arguments as JSON text)."""
    calls = [wire.tool_call(call["name"], orjson.dumps(call["arguments"]).decode())
             for call in tool_calls_of(answer.text) or ()]
    return wire.Answer(None, calls, None, "tool_calls", answer.model, answer.usage)
