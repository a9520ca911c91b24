"""The demo's traffic: tickets sent through a gateway, then the cut-over walked through a live one.

With the stand-in, the gateway prices each call with ``STANDIN_PRICES`` (made-up list prices), so the
portfolio at the end of the demo has costs to rank.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import openai

from distillery.demo.standin import STANDIN_MODEL, STANDIN_PRICES, start_frontier_standin
from distillery.demo.workload import WORKLOAD, demo_messages, generate_tickets
from distillery.gateway import WORKLOAD_HEADER, BackgroundGateway, GatewayConfig
from distillery.routing import CANARY, SHADOW, SMALL, RollbackPolicy, RouteStore
from distillery.serving import Endpoints
from distillery.store import ArtifactStore, LogStore
from distillery.tasks import Cascade, DecodingPolicy


@contextlib.contextmanager
def _gateway_to_frontier(frontier_url: str | None, api_key_env: str | None, **settings) -> Iterator[BackgroundGateway]:
    """A gateway on loopback in front of ``frontier_url``, or of a stand-in started for it; both stop
    (the gateway flushing what it recorded) when the block ends."""
    standin = None if frontier_url else start_frontier_standin()
    config = GatewayConfig.single(frontier_url or standin.url, api_key_env=api_key_env, port=0,
                                  require_api_key=False, models=STANDIN_PRICES if standin else {}, **settings)
    gateway = BackgroundGateway(config).start()
    try:
        yield gateway
    finally:
        gateway.stop()
        if standin:
            standin.shutdown()


@dataclass
class TrafficResult:
    calls: int
    failed: int
    gateway_url: str
    written: int
    journaled: int
    log_store_url: str


def send_demo_traffic(calls: int, *, frontier_url: str | None = None, model: str = STANDIN_MODEL,
                      api_key_env: str | None = None, concurrency: int = 8,
                      on_call: Callable[[], None] | None = None, seed: int = 7, workload: str = WORKLOAD,
                      messages: Callable[[str], list[dict]] = demo_messages, max_tokens: int = 8,
                      tools: list[dict] | None = None) -> TrafficResult:
    """Send demo tickets, as ``messages`` of a ticket, through a gateway to the frontier (the stand-in
    unless a URL is given) under ``workload``; with ``tools``, each call offers them and requires a call.

    The gateway records every exchange in the configured log store and is stopped, and so
    flushed, before this returns.
    """
    with _gateway_to_frontier(frontier_url, api_key_env) as gateway:
        client = openai.OpenAI(base_url=gateway.url, api_key="demo", max_retries=2,
                               default_headers={WORKLOAD_HEADER: workload})

        offered = {"tools": tools, "tool_choice": "required"} if tools else {}

        def send(ticket: str) -> bool:
            try:
                client.chat.completions.create(model=model, messages=messages(ticket), max_tokens=max_tokens,
                                               temperature=0, **offered)
                return True
            except openai.APIError:
                return False  # the gateway recorded it as a failed exchange; curation drops it
            finally:
                if on_call:
                    on_call()

        with ThreadPoolExecutor(concurrency) as pool:
            failed = sum(not ok for ok in pool.map(send, generate_tickets(calls, seed)))
    recorder = gateway.gateway.recorder
    return TrafficResult(calls, failed, gateway.url, recorder.written, recorder.journaled, recorder.store.url)


@dataclass
class CutoverStep:
    route: str
    calls: int
    failed: int
    answered_by_small_model: int
    note: str = ""
    escalated: int = 0  # a cascade route: calls the small model was not sure enough of, answered by the frontier


def walk_cutover(*, frontier_url: str | None = None, model: str = STANDIN_MODEL, api_key_env: str | None = None,
                 calls_per_step: int = 12, say: Callable[[str], None] = print) -> list[CutoverStep]:
    """Move the demo workload from shadow to canary to the small model through a live gateway, then kill the
    small model's server mid-traffic: callers keep getting answers (from the frontier) and the route rolls back.
    The deployed endpoint is started again at the end, and the route left in shadow.
    """
    routes, endpoints = RouteStore(LogStore().engine), Endpoints()
    route, endpoint = routes.get(WORKLOAD), endpoints.current(WORKLOAD)
    if route is None or endpoint is None:
        say("no deployed endpoint for the workload (the gate refused it): the cut-over walk is skipped")
        return []
    tickets = iter(generate_tickets(10 * calls_per_step, seed=99))
    steps: list[CutoverStep] = []

    def traffic(client: openai.OpenAI, label: str, note: str = "") -> CutoverStep:
        failed = small = 0
        escalated_before = escalations()
        for i in range(calls_per_step):
            try:
                answer = client.chat.completions.create(model=model, messages=demo_messages(next(tickets)),
                                                        max_tokens=8, temperature=0, user=f"customer-{i}")
                small += answer.model != model  # the small model answers under its adapter's name
            except openai.APIError:
                failed += 1
        escalated = escalations() - escalated_before
        steps.append(CutoverStep(label, calls_per_step, failed, small, note, escalated))
        threshold = routes.get(WORKLOAD).cascade
        coverage = (f", {escalated} escalated to the frontier below the confidence threshold {threshold.threshold:.3g} "
                    f"(coverage {small / (small + escalated):.0%})" if threshold and small + escalated else "")
        say(f"  {label}: {calls_per_step} calls, {failed} failed, {small} answered by the small model{coverage}"
            + (f" ({note})" if note else ""))
        return steps[-1]

    def move(mode: str, percent: float = 0.0, **change) -> None:
        routes.set(replace(routes.get(WORKLOAD), mode=mode, canary_percent=percent, **change), "demo cut-over walk")
        time.sleep(0.5)  # the gateway reads routes every 0.2 s

    # 12 calls a step: a cascade's coverage over so few calls swings widely, so only a collapse rolls back here
    rollback = RollbackPolicy(min_samples=4, max_p95_latency_ms=30_000, max_coverage_drop=0.5)
    gateway = None

    def escalations() -> int:
        return gateway.gateway.metrics.escalated[WORKLOAD] if gateway else 0

    cascade = route.cascade or _calibrated_cascade()
    if cascade:
        say(f"  {'the gate approved a cascade' if route.cascade else 'the gate approved full mode; calibration chose'}"
            f": the small model answers alone when its confidence ({cascade.measure.replace('_', ' ')}) is at "
            f"least {cascade.threshold:.3g}, {cascade.coverage:.0%} of the held-out calls")
    try:
        with _gateway_to_frontier(frontier_url, api_key_env, route_refresh_s=0.2, rollback=rollback) as gateway:
            client = openai.OpenAI(base_url=gateway.url, api_key="demo", max_retries=0, timeout=120,
                                   default_headers={WORKLOAD_HEADER: WORKLOAD})
            move(SHADOW)
            traffic(client, "shadow", "the frontier answers; the small model answers a copy, logged and compared")
            move(CANARY, 50)
            traffic(client, "canary 50%", "callers chosen by a stable hash of their user id")
            move(SMALL)
            traffic(client, "small", "every call")
            if cascade and not route.cascade:
                move(SMALL, cascade=cascade)  # as `distillery route set ... small --threshold T` does
                traffic(client, f"small, cascade at {cascade.threshold:.3g}", "set by hand on the full-mode route")
            os.kill(endpoint.pid, signal.SIGKILL)
            say(f"  forced fault: the small model's server (pid {endpoint.pid}) is killed")
            traffic(client, "small, server dead", "each failed small-model call falls back to the frontier")
            time.sleep(0.5)
            for event in routes.events(WORKLOAD, limit=3):
                if event.kind == "rollback":
                    say(f"  rollback recorded: {event.from_mode} -> {event.to_mode} ({event.reason})")
    finally:
        adapter = Path(endpoint.adapter_path)
        restarted = endpoints.deploy(WORKLOAD, endpoint.base_model, adapter, endpoint.model,
                                     demo_messages("I was charged twice"), DecodingPolicy.load(adapter),
                                     needs_confidence=cascade is not None)
        routes.set(replace(routes.get(WORKLOAD), mode=SHADOW, canary_percent=0.0, small_url=restarted.url,
                           small_api=restarted.api, cascade=route.cascade),
                   "demo: endpoint restarted after the forced fault")
        say(f"  the endpoint is serving again at {restarted.url}; the route is back in shadow")
    return steps


def _calibrated_cascade() -> Cascade | None:
    """The cascade the newest eval report's calibration chose (also when the gate approved full mode)."""
    reports = ArtifactStore()
    if not reports.versions(WORKLOAD, "eval_report"):
        return None
    return Cascade.from_record(reports.latest(WORKLOAD, "eval_report").manifest.get("calibrated_cascade"))
