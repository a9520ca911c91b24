"""The cut-over machinery under load: canary share, fallback and rollback, shadow overhead.

    python benchmarks/cutover.py [--requests 20000] [--concurrency 64] [--canary 10] [--quick]

Fast stub servers stand in for both the frontier (answers "ok") and the small model (answers
"small"), so this measures the gateway's routing, not CPU inference (the real small model is
covered by the tests and the demo). Each caller sends a distinct route key (the body's ``user``).

1. Share: --requests at --concurrency through a canary route; the share answered by the small model.
2. Kill: the same load again; after --kill-after seconds (2), or once half of it is answered if that comes first,
   the small-model server is killed. Failed client requests
   (every small-model failure must fall back to the frontier) and the time from the kill until the
   route's automatic rollback is stored, against the rollback window.
3. Shadow overhead: one request at a time, alternating between a workload routed to the frontier
   and one in shadow (the same gateway, the same moment), p50 of each.
4. Cascade overhead on covered calls: the same, alternating between a workload in ``small`` and one in ``small``
   with a cascade whose threshold every answer clears (the small model's log-probabilities asked for, its
   confidence computed, the gateway's default 5% audited); then --requests at --concurrency through each, the
   requests/s of each and their ratio.

``--quick`` runs the same on 2,000 requests at 16 concurrent, killing after 0.3 s: what the tests run. The last line
is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gateway import STUB_PROVIDER, start, wait_until_up  # noqa: E402

from distillery.routing import CANARY, FRONTIER, SHADOW, SMALL, RollbackPolicy, Route, RouteStore  # noqa: E402
from distillery.store import LogStore  # noqa: E402
from distillery.tasks import SEQUENCE_PROBABILITY, Cascade  # noqa: E402

MESSAGES = [{"role": "user", "content": "I was charged twice"}]


async def call(session: aiohttp.ClientSession, url: str, workload: str, key: str) -> str | None:
    """The answer's text, or None when the request failed."""
    body = {"model": "stub-model", "messages": MESSAGES, "user": key}
    try:
        async with session.post(f"{url}/chat/completions", json=body,
                                headers={"X-Distillery-Workload": workload}) as response:
            payload = await response.json()
            return payload["choices"][0]["message"]["content"] if response.status == 200 else None
    except (aiohttp.ClientError, KeyError, ValueError):
        return None


async def load(url: str, workload: str, n: int, concurrency: int, during=None) -> tuple[dict[str, int], float]:
    """Answers counted by text (None: failed) and the seconds the load took; ``during(answers)`` runs beside it."""
    counter = iter(range(n))
    answers: dict[str, int] = {}

    async def worker(session):
        for i in counter:
            text = await call(session, url, workload, f"caller-{workload}-{i}")
            answers[text] = answers.get(text, 0) + 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        started = time.perf_counter()
        side = asyncio.create_task(during(answers)) if during else None
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        seconds = time.perf_counter() - started
        if side:
            await side
    return answers, seconds


async def alternating_latencies(url: str, workloads: tuple[str, str], n: int) -> tuple[list[float], list[float]]:
    timings: tuple[list[float], list[float]] = ([], [])
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for i in range(n):
            order = (0, 1) if i % 2 else (1, 0)
            for side in order:
                started = time.perf_counter()
                await call(session, url, workloads[side], f"seq-{i}")
                timings[side].append((time.perf_counter() - started) * 1000)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--canary", type=float, default=10.0, help="canary percentage")
    parser.add_argument("--latency-samples", type=int, default=1000)
    parser.add_argument("--kill-after", type=float, default=2.0, help="seconds into the second load")
    parser.add_argument("--quick", action="store_true", help="a few seconds: what the tests run")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.concurrency, args.latency_samples, args.kill_after = 2000, 16, 50, 0.3

    workdir = Path(tempfile.mkdtemp(prefix="cutover-bench-"))
    db = f"sqlite:///{workdir / 'logs.db'}"
    env = {**os.environ, "DISTILLERY_HOME": str(workdir), "DISTILLERY_LOG_STORE_URL": db, "PYTHONPATH": str(ROOT)}
    store = LogStore(db)
    store.upgrade()
    routes = RouteStore(store.engine)
    policy = RollbackPolicy()
    frontier, frontier_url = start([sys.executable, STUB_PROVIDER, "0", "ok"], env)
    small, small_url = start([sys.executable, STUB_PROVIDER, "0", "small"], env)
    canary = Route("canary", CANARY, args.canary, small_url, "canary")
    routes.set(canary, "benchmark")
    routes.set(Route("killed", CANARY, args.canary, small_url, "killed"), "benchmark")
    routes.set(Route("shadowed", SHADOW, 0, small_url, "shadowed"), "benchmark")
    routes.set(Route("direct", FRONTIER), "benchmark")
    routes.set(Route("small", SMALL, 0, small_url, "small"), "benchmark")
    routes.set(Route("cascade", SMALL, 0, small_url, "cascade", cascade=Cascade(0.5, SEQUENCE_PROBABILITY)),
               "benchmark")
    port = 20000 + os.getpid() % 20000
    # The stubs never agree ("ok" against "small"): disagreement (shadow, audits) must not roll the measured routes
    # back, so its threshold is off; errors, latency and validity keep theirs.
    config = workdir / "gateway.toml"
    config.write_text(f'[gateway]\nport = {port}\nrequire_api_key = false\n\n'
                      f'[upstreams.stub]\nbase_url = "{frontier_url}"\n\n[rollback]\nmax_disagreement_rate = 1.0\n')
    # one process: the figures since 2026-12 were measured on one (--workers: benchmarks/gateway.py)
    gateway = subprocess.Popen([sys.executable, "-m", "distillery.cli", "gateway", "--config", str(config),
                                "--workers", "1"],
                               env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until_up(f"http://127.0.0.1:{port}/healthz", gateway)
        loop = uvloop.new_event_loop()
        direct_ms, shadow_ms = loop.run_until_complete(
            alternating_latencies(url, ("direct", "shadowed"), args.latency_samples))
        share_answers, share_seconds = loop.run_until_complete(load(url, "canary", args.requests, args.concurrency))
        small_ms, cascade_ms = loop.run_until_complete(
            alternating_latencies(url, ("small", "cascade"), args.latency_samples))
        small_answers, small_seconds = loop.run_until_complete(load(url, "small", args.requests, args.concurrency))
        covered_answers, covered_seconds = loop.run_until_complete(
            load(url, "cascade", args.requests, args.concurrency))

        killed_at: list[float] = []

        async def kill_small_model(answers: dict):
            # at --kill-after seconds or once half the requests are answered, whichever comes first (a fast machine
            # ran the quick mode's whole load in less than its 0.3 s, and nothing was left to fail)
            began = time.perf_counter()
            while time.perf_counter() - began < args.kill_after and sum(answers.values()) < args.requests // 2:
                await asyncio.sleep(0.005)
            small.send_signal(signal.SIGKILL)
            killed_at.append(time.time())

        kill_answers, _ = loop.run_until_complete(
            load(url, "killed", args.requests, args.concurrency, kill_small_model))
        deadline = time.monotonic() + policy.window_s
        while routes.get("killed").mode == CANARY and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(120)
        for process in (frontier, small):
            process.kill()
            process.wait(30)

    rollbacks = [e for e in reversed(routes.events("killed")) if e.kind == "rollback"]  # oldest first
    rollback = rollbacks[0] if rollbacks else None
    rollback_after_s = None
    if rollback and killed_at:
        at = rollback.created_at if rollback.created_at.tzinfo else rollback.created_at.replace(tzinfo=dt.timezone.utc)
        rollback_after_s = round(at.timestamp() - killed_at[0], 3)
    total = sum(share_answers.values())
    share = share_answers.get("small", 0) / total
    print(json.dumps({
        "requests": args.requests,
        "concurrency": args.concurrency,
        "canary_target": args.canary,
        "canary_share": round(100 * share, 2),
        "share_error_points": round(abs(100 * share - args.canary), 2),
        "canary_rps": round(total / share_seconds),
        "failed_client_requests": share_answers.get(None, 0) + kill_answers.get(None, 0),
        "failed_client_requests_with_small_model_killed": kill_answers.get(None, 0),
        "answered_by_small_model_before_the_kill": kill_answers.get("small", 0),
        "rolled_back": rollback is not None,
        # With the server dead, shadow copies fail too: the route may step back twice, to the frontier.
        "rollbacks": [f"{e.from_mode} -> {e.to_mode}: {e.reason}" for e in rollbacks],
        "rollback_seconds": rollback_after_s,  # from the kill until the first rollback was stored
        "rollback_window_s": policy.window_s,
        "frontier_mode_p50_ms": round(statistics.median(direct_ms), 3),
        "shadow_mode_p50_ms": round(statistics.median(shadow_ms), 3),
        "shadow_added_p50_ms": round(statistics.median(shadow_ms) - statistics.median(direct_ms), 3),
        "small_mode_p50_ms": round(statistics.median(small_ms), 3),
        "cascade_covered_p50_ms": round(statistics.median(cascade_ms), 3),
        "cascade_added_p50_ms": round(statistics.median(cascade_ms) - statistics.median(small_ms), 3),
        "small_mode_rps": round(sum(small_answers.values()) / small_seconds),
        "cascade_covered_rps": round(sum(covered_answers.values()) / covered_seconds),
        "cascade_vs_small_rps": round(sum(covered_answers.values()) / covered_seconds
                                      / (sum(small_answers.values()) / small_seconds), 3),
        "cascade_answered_by_small_model": covered_answers.get("small", 0) / max(sum(covered_answers.values()), 1),
        "quick": args.quick,
    }))


if __name__ == "__main__":
    main()
