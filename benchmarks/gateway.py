"""Gateway overhead: the same load sent directly to a stub provider and through the gateway.

    python benchmarks/gateway.py --requests 20000 --concurrency 64 [--db URL] [--outage-seconds S]

Starts the stub upstream and the gateway as separate processes on loopback. Measures:
added latency one request at a time (interleaving direct and gateway calls, so that drift
of this noisy machine hits both alike), throughput at --concurrency, and, after the
gateway shut down and flushed, how many exchanges reached the log store. 10% of the calls
are streamed and the stub fails 1% of all calls with a 500. --outage-seconds makes a
PostgreSQL --db refuse connections for that long in the middle of the throughput run.
A bare pass-through on the gateway's own HTTP layer that records nothing (benchmarks/bare_proxy.py)
runs the same load in the same run: the ceiling for the gateway on this machine. The same request
handler served by uvicorn (httptools, uvloop; benchmarks/gateway_on_uvicorn.py) runs it too, in
rounds interleaved with the gateway's (the median of two each), to choose the HTTP layer by
measurement: ``uvicorn_vs_hand_written``. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import aiohttp
import sqlalchemy as sa
import uvloop

ROOT = Path(__file__).resolve().parents[1]
STUB_PROVIDER = str(ROOT / "tests" / "support" / "stub_provider.py")  # test and benchmark support, not product
MESSAGES = [{"role": "system", "content": "Route the ticket."}, {"role": "user", "content": "I was charged twice"}]


def start(command: list[str], env: dict) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, text=True)
    return process, process.stdout.readline().strip()


async def one_call(session: aiohttp.ClientSession, url: str, i: int, workload: str) -> bool:
    stream = i % 10 == 0
    body = {"model": "stub-model", "messages": MESSAGES, "stream": stream}
    async with session.post(f"{url}/chat/completions", json=body,
                            headers={"X-Distillery-Workload": workload}) as response:
        await response.read()
        return response.status < 500


async def sequential_latencies(url_a: str, url_b: str, n: int, workload: str) -> tuple[list[float], list[float]]:
    a, b = [], []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for i in range(n):
            for url, sink in ((url_a, a), (url_b, b)) if i % 2 else ((url_b, b), (url_a, a)):
                started = time.perf_counter()
                await one_call(session, url, i * 10 + 1, workload)  # never a streamed call: same work both ways
                sink.append((time.perf_counter() - started) * 1000)
    return a, b


async def throughput(url: str, n: int, concurrency: int, workload: str, during=None) -> tuple[float, int]:
    counter = iter(range(n))
    failures = 0

    async def worker(session):
        nonlocal failures
        for i in counter:
            try:
                ok = await one_call(session, url, i, workload)
            except aiohttp.ClientError:
                ok = False
            failures += not ok

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        started = time.perf_counter()
        side = asyncio.create_task(during()) if during else None
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        seconds = time.perf_counter() - started
        if side:
            await side
    return n / seconds, failures


def wait_until_up(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answers, if only with 405 to a GET
        except OSError:
            assert time.monotonic() < deadline and process.poll() is None, f"{url} did not come up"
            time.sleep(0.2)


def set_connections(admin: sa.Engine, database: str, allowed: bool) -> None:
    with admin.connect() as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {str(allowed).lower()}'))
        if not allowed:
            conn.execute(sa.text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'"))


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-samples", type=int, default=1000)
    parser.add_argument("--db", help="log store URL; default: a new SQLite file")
    parser.add_argument("--outage-seconds", type=float, default=0, help="PostgreSQL only")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    db = args.db or f"sqlite:///{workdir / 'logs.db'}"
    env = {**os.environ, "DISTILLERY_HOME": str(workdir), "DISTILLERY_LOG_STORE_URL": db, "PYTHONPATH": str(ROOT)}
    workload = f"bench-{uuid.uuid4().hex[:8]}"
    stub, stub_url = start([sys.executable, STUB_PROVIDER, "100"], env)
    port = 20000 + os.getpid() % 20000
    gateway = subprocess.Popen([sys.executable, "-m", "distillery.cli", "gateway", "--upstream", stub_url,
                                "--port", str(port), "--no-require-api-key"], env=env, stdout=subprocess.DEVNULL)
    gateway_url = f"http://127.0.0.1:{port}/v1"
    bare = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "bare_proxy.py"), stub_url, str(port + 1)],
                            env=env)
    bare_url = f"http://127.0.0.1:{port + 1}/v1"
    uvicorn_url, uvicorn_workload = f"http://127.0.0.1:{port + 2}/v1", f"{workload}-uvicorn"
    on_uvicorn = None
    try:
        wait_until_up(f"http://127.0.0.1:{port}/healthz", gateway)
        # Only now: the first gateway has migrated the log store, which two processes must not do at once.
        on_uvicorn = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "gateway_on_uvicorn.py"), stub_url,
                                       str(port + 2)], env=env)
        wait_until_up(f"{bare_url}/chat/completions", bare)
        wait_until_up(f"http://127.0.0.1:{port + 2}/healthz", on_uvicorn)

        loop = uvloop.new_event_loop()
        direct_ms, gateway_ms = loop.run_until_complete(
            sequential_latencies(stub_url, gateway_url, args.latency_samples, workload))
        direct_rps, direct_failed = loop.run_until_complete(
            throughput(stub_url, args.requests, args.concurrency, workload))
        bare_rps, _ = loop.run_until_complete(throughput(bare_url, args.requests, args.concurrency, workload))

        during = None
        if args.outage_seconds:
            url = sa.make_url(db)
            admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")

            async def during():
                await asyncio.sleep(1)
                set_connections(admin, url.database, False)
                await asyncio.sleep(args.outage_seconds)
                set_connections(admin, url.database, True)

        gateway_rounds, uvicorn_rounds, gateway_failed = [], [], 0
        for round_ in range(2):
            rps, failed = loop.run_until_complete(throughput(gateway_url, args.requests, args.concurrency, workload,
                                                             during if round_ == 0 else None))
            gateway_rounds.append(rps)
            gateway_failed += failed
            uvicorn_rounds.append(loop.run_until_complete(
                throughput(uvicorn_url, args.requests, args.concurrency, uvicorn_workload))[0])
        gateway_rps, uvicorn_rps = statistics.median(gateway_rounds), statistics.median(uvicorn_rounds)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    finally:
        for process in (gateway, on_uvicorn):
            if process is not None:
                process.send_signal(signal.SIGTERM)
                process.wait(120)
        for process in (bare, stub):
            process.terminate()
            process.wait(30)

    def gauge(name: str) -> int:
        line = next(l for l in metrics.splitlines() if l.startswith(name + " "))
        return int(float(line.split()[1]))

    sent = args.latency_samples + 2 * args.requests  # the gateway's share of the latency phase, then two load rounds
    store = sa.create_engine(db)
    count = sa.text("SELECT count(*) FROM exchanges WHERE workload = :w")
    with store.connect() as conn:
        stored = conn.execute(count, {"w": workload}).scalar()
        stored_via_uvicorn = conn.execute(count, {"w": uvicorn_workload}).scalar()
    still_journaled = sum(1 for path in workdir.glob("gateway-journal.jsonl*") for _ in open(path))
    result = {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "db": sa.make_url(db).get_backend_name(),
        "outage_seconds": args.outage_seconds,
        "direct_p50_ms": round(statistics.median(direct_ms), 3),
        "gateway_p50_ms": round(statistics.median(gateway_ms), 3),
        "p50_added_ms": round(statistics.median(gateway_ms) - statistics.median(direct_ms), 3),
        "p99_added_ms": round(percentile(gateway_ms, 99) - percentile(direct_ms, 99), 3),
        "direct_rps": round(direct_rps),
        "gateway_rps": round(gateway_rps),
        "throughput_ratio": round(gateway_rps / direct_rps, 3),
        "bare_proxy_rps": round(bare_rps),
        "bare_proxy_ratio": round(bare_rps / direct_rps, 3),
        "client_failures_direct": direct_failed,
        "client_failures_gateway": gateway_failed,
        "sent_through_gateway": sent,
        "stored": stored,
        "journaled": gauge("distillery_gateway_rows_journaled"),
        "still_in_journal": still_journaled,
        "lost": sent - stored - still_journaled,
        "uvicorn_rps": round(uvicorn_rps),
        "uvicorn_throughput_ratio": round(uvicorn_rps / direct_rps, 3),
        "uvicorn_vs_hand_written": round(uvicorn_rps / gateway_rps, 3),
        "uvicorn_lost": 2 * args.requests - stored_via_uvicorn,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
