"""The rollout autopilot: how many compared calls it needs to promote a sound model and to step back a worse one,
and how often it errs, on planted agreement rates; then one rollout through the real gateway.

    python benchmarks/autopilot.py [--runs 1000] [--horizon 10000] [--quick]

1. Simulated rollouts drive ``distillery.routing.autopilot`` (the module the gateway judges routes with) one compared
   call at a time, with no dwell: for an evaluated agreement of 0.95 (and 0.85), a non-inferior model (planted
   agreement = evaluated) and a model 2 points worse. Per scenario, over --runs rollouts of --horizon compared calls:
   the compared calls from shadow to small (median), the share of non-inferior models ever stepped back, the compared
   calls until a worse model is stepped back (median), and the share of worse models never stepped back.
   The baseline, on the same planted calls: a fixed-n test re-run as the calls come in (a one-sided z-test of
   "agreement below evaluated" at 5%, looked at every 100 compared calls), which is what the sequential test replaces.
2. One rollout end to end: the real gateway (``distillery gateway --config``, its ``[autopilot]`` with a 1 s
   dwell per stage), a stub frontier, and a small-model stand-in that agrees with it at a planted rate (0.96 against
   an evaluated 0.95). Callers send calls until the route reaches small; then the stand-in's agreement drops to 0.80
   and they go on until the route steps back. Reports the stages walked, the events' evidence, and failed client calls.

``--quick`` runs 20 rollouts per scenario and the end-to-end rollout: what the tests run. The last line is one JSON
object.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

from gateway import STUB_PROVIDER, start, wait_until_up  # noqa: E402
from support.stub_provider import StubUpstream  # noqa: E402

from distillery.routing import (SHADOW, SMALL, STEP_BACK, Approval, AutopilotPolicy, Evidence, Route,  # noqa: E402
                                RouteStore)
from distillery.store import LogStore  # noqa: E402
from distillery.tasks import DecodingPolicy  # noqa: E402

LABELS = DecodingPolicy(labels=("ok", "other"))
LONG_AGO = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
NOW = LONG_AGO + dt.timedelta(days=365)  # every dwell passed: the simulation counts calls, not time
MARGIN = 0.02
Z_95 = 1.6449  # one-sided 5%
MESSAGES = [{"role": "user", "content": "where is my parcel"}]


def rollout(policy: AutopilotPolicy, approval: Approval, agreement: float, horizon: int,
            rng: random.Random) -> tuple[int | None, int | None, int | None]:
    """One simulated rollout: (compared calls until small, until the first step back, until the baseline's first
    rejection), None where it never came within ``horizon``."""
    route = Route("sim", SHADOW, 0.0, "http://127.0.0.1:9/v1", "sim", LABELS, autopilot=True, approval=approval)
    evidence = Evidence()
    promoted = stepped_back = baseline = None
    agreed_total = 0
    sd = math.sqrt(approval.agreement * (1 - approval.agreement))
    for call in range(1, horizon + 1):
        agreed = rng.random() < agreement
        agreed_total += agreed
        if baseline is None and call % 100 == 0 and \
                (agreed_total / call - approval.agreement) / (sd / math.sqrt(call)) < -Z_95:
            baseline = call
        if stepped_back is not None:
            if baseline is not None:
                break
            continue
        evidence = policy.add(evidence, approval, 1, agreed)
        decision = policy.judge(route, evidence, LONG_AGO, NOW)
        if decision is None:
            continue
        if decision.kind == STEP_BACK:
            stepped_back = call
            continue
        route, evidence = decision.route, Evidence()
        if route.mode == SMALL:
            promoted = call
    return promoted, stepped_back, baseline


def median_or_none(values: list[int | None]) -> float | None:
    """The median, a run that never came counting as later than any that did; None when most never came."""
    ordered = sorted(values, key=lambda v: math.inf if v is None else v)
    middle = ordered[len(ordered) // 2]
    return None if middle is None else float(statistics.median(v if v is not None else math.inf for v in ordered))


def simulate(evaluated: float, runs: int, horizon: int, seed: int) -> dict:
    policy = AutopilotPolicy(min_dwell_s=(0.0, 0.0, 0.0), margin=MARGIN)
    approval = Approval("full", evaluated, model_version="sim")
    rng = random.Random(seed)
    sound = [rollout(policy, approval, evaluated, horizon, rng) for _ in range(runs)]
    worse = [rollout(policy, approval, evaluated - MARGIN, horizon, rng) for _ in range(runs)]
    return {
        "evaluated_agreement": evaluated,
        "promote_calls_median": median_or_none([r[0] for r in sound]),
        "promoted_rate": round(sum(r[0] is not None for r in sound) / runs, 4),
        "false_rollback_rate": round(sum(r[1] is not None for r in sound) / runs, 4),
        "detect_calls_median": median_or_none([r[1] for r in worse]),
        "missed_drop_rate": round(sum(r[1] is None for r in worse) / runs, 4),
        "worse_promoted_rate": round(sum(r[0] is not None for r in worse) / runs, 4),
        "baseline_false_rollback_rate": round(sum(r[2] is not None for r in sound) / runs, 4),
        "baseline_detect_calls_median": median_or_none([r[2] for r in worse]),
    }


async def _load_until(url: str, done, concurrency: int, counts: dict, deadline: float) -> None:
    """Callers send calls (each its own route key) until ``done()``; counts answered and failed calls."""
    async def caller(session: aiohttp.ClientSession, worker: int) -> None:
        i = 0
        while not done() and time.monotonic() < deadline:
            i += 1
            body = {"model": "stub-model", "messages": MESSAGES, "user": f"caller-{worker}-{i}"}
            try:
                async with session.post(f"{url}/chat/completions", json=body,
                                        headers={"X-Distillery-Workload": "triage"}) as response:
                    await response.read()
                    counts["ok" if response.status == 200 else "failed"] += 1
            except aiohttp.ClientError:
                counts["failed"] += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(caller(session, w) for w in range(concurrency)))


def end_to_end(workdir: Path, timeout_s: float) -> dict:
    db = f"sqlite:///{workdir / 'logs.db'}"
    env = {**os.environ, "DISTILLERY_HOME": str(workdir), "DISTILLERY_LOG_STORE_URL": db, "PYTHONPATH": str(ROOT)}
    store = LogStore(db)
    store.upgrade()
    routes = RouteStore(store.engine)
    frontier, frontier_url = start([sys.executable, STUB_PROVIDER, "0", "ok"], env)
    stand_in = StubUpstream().start()
    stand_in.agreement = 0.96
    routes.set(Route("triage", SHADOW, 0.0, stand_in.url, "triage-v1", LABELS, autopilot=True,
                     approval=Approval("full", 0.95, model_version="1")), "benchmark: deployed")
    port = 20000 + os.getpid() % 20000
    config = workdir / "gateway.toml"
    config.write_text(f'[gateway]\nport = {port}\nrequire_api_key = false\n\n'
                      f'[upstreams.stub]\nbase_url = "{frontier_url}"\n\n'
                      "[autopilot]\nmin_dwell_s = [1, 1, 1]\n")
    # one process: the figures since 2026-12 were measured on one (--workers: benchmarks/gateway.py)
    gateway = subprocess.Popen([sys.executable, "-m", "distillery.cli", "gateway", "--config", str(config),
                                "--workers", "1"],
                               env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    counts = {"ok": 0, "failed": 0}
    started = time.monotonic()
    deadline = started + timeout_s
    seen = {"mode": SHADOW, "at": 0.0}

    def reached(target_mode: str | None):
        def done() -> bool:
            if time.monotonic() - seen["at"] > 0.05:  # the database read every 50 ms, not per call
                seen.update(mode=routes.get("triage").mode, at=time.monotonic())
            return (seen["mode"] == SMALL) if target_mode == SMALL else seen["mode"] != SMALL
        return done

    try:
        wait_until_up(f"http://127.0.0.1:{port}/healthz", gateway)
        asyncio.run(_load_until(url, reached(SMALL), 16, counts, deadline))
        promoted_after = counts["ok"] + counts["failed"]
        stand_in.agreement = 0.80
        asyncio.run(_load_until(url, reached(None), 16, counts, deadline))
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(120)
        frontier.kill()
        frontier.wait(30)
        stand_in.stop()
    events = list(reversed(routes.events("triage")))
    stages = [events[0].to_mode] + [e.to_mode for e in events[1:] if e.kind in ("advance", "rollback")]
    return {
        "e2e_stages": stages,
        "e2e_events": [f"{e.kind}: {e.from_mode} -> {e.to_mode}; calls {e.evidence['calls']}, agreement "
                       f"{e.evidence['agreement']}, llr {e.evidence['llr']}, bound {e.evidence['bound']}"
                       for e in events if e.evidence],
        "e2e_client_calls": counts["ok"] + counts["failed"],
        "e2e_calls_until_small": promoted_after,
        "e2e_failed_client_calls": counts["failed"],
        "e2e_seconds": round(time.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="simulated rollouts per scenario")
    parser.add_argument("--horizon", type=int, default=10_000, help="compared calls per simulated rollout")
    parser.add_argument("--timeout", type=float, default=300, help="seconds the end-to-end rollout may take")
    parser.add_argument("--quick", action="store_true", help="20 rollouts per scenario: what the tests run")
    args = parser.parse_args()
    if args.quick:
        args.runs = 20
    began = time.perf_counter()
    scenarios = [simulate(evaluated, args.runs, args.horizon, seed) for seed, evaluated in enumerate((0.95, 0.85))]
    simulated_s = time.perf_counter() - began
    for scenario in scenarios:
        print(json.dumps(scenario), flush=True)
    e2e = end_to_end(Path(tempfile.mkdtemp(prefix="autopilot-bench-")), args.timeout)
    headline = scenarios[0]
    print(json.dumps({
        "n_runs": args.runs,
        "horizon_calls": args.horizon,
        "margin": MARGIN,
        "delta": AutopilotPolicy().delta,
        **{key: headline[key] for key in ("promote_calls_median", "detect_calls_median", "false_rollback_rate",
                                          "missed_drop_rate", "baseline_false_rollback_rate",
                                          "baseline_detect_calls_median")},
        "at_0.85": {key: value for key, value in scenarios[1].items() if key != "evaluated_agreement"},
        **e2e,
        "simulated_seconds": round(simulated_s, 1),
        "quick": args.quick,
    }))


if __name__ == "__main__":
    main()
