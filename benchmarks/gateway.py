"""Gateway overhead: the same load sent directly to a stub provider, through a bare pass-through, and through the
gateway; and what a kill -9 under load loses.

    python benchmarks/gateway.py [--requests 20000] [--concurrency 64] [--rounds 3] [--db URL] [--outage-seconds S]
                                 [--mix default|tools|stream]
    python benchmarks/gateway.py --kill [--runs 5]
    python benchmarks/gateway.py --quick            (either mode: a few seconds, what the tests run)

Starts the stub upstream, the gateway, a bare pass-through on the gateway's own HTTP layer that records nothing
(benchmarks/bare_proxy.py: the ceiling for the gateway on this machine) and the gateway's request handler served by
uvicorn (httptools, uvloop; benchmarks/gateway_on_uvicorn.py) as separate processes on loopback. Measures:

- added latency one request at a time, interleaving direct and gateway calls so that drift of this noisy machine
  hits both alike: ``p50_added_ms``, ``p99_added_ms``;
- throughput at --concurrency in --rounds interleaved rounds, each sending the load directly, through the bare
  pass-through, through the gateway and through the handler on uvicorn: the medians of each round's ratios,
  ``throughput_ratio`` (gateway / direct), ``gateway_vs_bare`` (gateway / bare pass-through, the cost of the
  gateway's own work) and ``uvicorn_vs_hand_written`` (uvicorn / gateway, which chooses the HTTP layer), and the
  CPU each proxy process spent per request (``*_cpu_us``: from /proc, steadier than requests/s on a shared machine;
  ``gateway_writer_cpu_us`` is the part of the gateway's spent by threads other than its event loop: the writer);
- after the gateway shut down and flushed, how many exchanges reached the log store (``lost``).

The mix of calls (--mix): ``default``, chat calls with a text answer, 10% of them streamed; ``tools``, the same with
tools offered and a function call required, so every answer is a tool call (streamed ones as deltas); ``stream``,
every call streamed. The stub fails 1% of all calls with a 500. --outage-seconds makes a PostgreSQL
--db refuse connections for that long in the first gateway round.

--kill: 16 callers send calls through the gateway, each marked with its own id (``metadata.probe``); after a random
0.5-1.5 s the gateway is killed with SIGKILL, started again on the same journal, and stopped; every call that was
answered 200 must be in the log store (``missing`` 0). The last line is one JSON object either way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Callable

import aiohttp
import sqlalchemy as sa
import uvloop

ROOT = Path(__file__).resolve().parents[1]
STUB_PROVIDER = str(ROOT / "tests" / "support" / "stub_provider.py")  # test and benchmark support, not product
MESSAGES = [{"role": "system", "content": "Route the ticket."}, {"role": "user", "content": "I was charged twice"}]
TOOLS = [{"type": "function", "function": {"name": "route_ticket", "parameters": {
    "type": "object", "properties": {"queue": {"type": "string"}, "priority": {"type": "integer"}},
    "required": ["queue"]}}}]
# Per mix: what every call's body adds, and how often a call is streamed (every Nth)
MIXES = {"default": ({}, 10), "tools": ({"tools": TOOLS, "tool_choice": "required"}, 10), "stream": ({}, 1)}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CALLER_HEADERS: dict[str, dict[str, str]] = {}  # a side's URL -> what its callers send besides the call (a key)
PEERS_VENV = ROOT / ".venv-peers"  # scripts/setup-peers
LITELLM_KEY = "sk-bench-0123456789abcdef"  # its proxy refuses to start without a master key


def free_ports(n: int) -> list[int]:
    """``n`` ports nobody listens on now, from the kernel (ports derived from the pid collided between two runs)."""
    probes = [socket.socket() for _ in range(n)]
    for probe in probes:
        probe.bind(("127.0.0.1", 0))
    ports = [probe.getsockname()[1] for probe in probes]
    for probe in probes:
        probe.close()
    return ports


def start(command: list[str], env: dict) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, text=True)
    return process, process.stdout.readline().strip()


def start_gateway(upstream_url: str, port: int, env: dict, workers: int = 1) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "distillery.cli", "gateway", "--upstream", upstream_url,
                             "--port", str(port), "--no-require-api-key", "--workers", str(workers)], env=env,
                            stdout=subprocess.DEVNULL)


def worker_pids(process: subprocess.Popen) -> list[int]:
    return [int(pid) for pid in Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()]


def callers_connected(pid: int, port: int) -> int:
    """Callers' connections process ``pid`` holds on ``port``: established TCP sockets among its open files."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    held = 0
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "01" and fields[9] in inodes:
            held += 1
    return held


async def one_call(session: aiohttp.ClientSession, url: str, i: int, workload: str, mix: str = "default",
                   **extra) -> bool:
    added, every = MIXES[mix]
    body = {"model": "stub-model", "messages": MESSAGES, "stream": i % every == 0, **added, **extra}
    async with session.post(f"{url}/chat/completions", json=body,
                            headers={"X-Distillery-Workload": workload, **CALLER_HEADERS.get(url, {})}) as response:
        await response.read()
        return response.status < 500


async def sequential_latencies(url_a: str, url_b: str, n: int, workload: str,
                               mix: str) -> tuple[list[float], list[float]]:
    a, b = [], []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for i in range(n):
            for url, sink in ((url_a, a), (url_b, b)) if i % 2 else ((url_b, b), (url_a, a)):
                started = time.perf_counter()
                # the same kind of call both ways: never streamed, unless the mix streams every call
                await one_call(session, url, i * 10 + 1, workload, mix)
                sink.append((time.perf_counter() - started) * 1000)
    return a, b


async def throughput(url: str, n: int, concurrency: int, workload: str, mix: str,
                     during=None) -> tuple[float, int]:
    counter = iter(range(n))
    failures = 0

    async def worker(session):
        nonlocal failures
        for i in counter:
            try:
                ok = await one_call(session, url, i, workload, mix)
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


def cpu_seconds(process: subprocess.Popen) -> tuple[float, float]:
    """User and system CPU of a process's main threads (event loops: its own and its workers') and of their other
    threads (the writers)."""
    main = other = 0.0
    for pid in (process.pid, *worker_pids(process)):
        for task in Path(f"/proc/{pid}/task").iterdir():
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            seconds = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
            if int(task.name) == pid:
                main += seconds
            else:
                other += seconds
    return main, other


def stop(process: subprocess.Popen, grace_s: float = 120) -> None:
    """SIGTERM (the gateways flush, nginx and LiteLLM end their workers); SIGKILL past ``grace_s`` (a process started
    with SIGTERM ignored, as some shells start background jobs, would otherwise outlive the run)."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


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


def gauge(metrics: str, name: str) -> float:
    """A gauge's value in the text of /metrics."""
    return next(float(line.split()[1]) for line in metrics.splitlines() if line.startswith(name + " "))


def stored_all(url: str, workers: bool = False, timeout_s: float = 60) -> None:
    """Until the proxy at ``url`` has no row waiting for its writer (the gateway's /healthz ``queue_depth``; with
    workers the sum on /metrics, once every worker has published since the load ended)."""
    deadline = time.monotonic() + timeout_s
    base = url.removesuffix("/v1")

    def queue_depth() -> float:
        if not workers:
            return json.load(urllib.request.urlopen(base + "/healthz")).get("queue_depth", 0)
        return gauge(urllib.request.urlopen(base + "/metrics").read().decode(), "distillery_gateway_queue_depth")

    if workers:
        time.sleep(0.6)  # distillery.gateway.metrics.WorkerShare's interval, and a little more
    while queue_depth() and time.monotonic() < deadline:
        time.sleep(0.05)


def set_connections(admin: sa.Engine, database: str, allowed: bool) -> None:
    with admin.connect() as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {str(allowed).lower()}'))
        if not allowed:
            conn.execute(sa.text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'"))


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def journal_lines(folder: Path) -> int:
    return sum(path.read_bytes().count(b"\n") for path in folder.glob("gateway-journal*.jsonl*")
               if not path.name.endswith((".lock", ".rejected")))


def start_litellm(stub_url: str, port: int, workers: int, workdir: Path) -> subprocess.Popen | str:
    """LiteLLM's proxy as its docs set it up for production, as far as this machine allows: ``--num_workers``,
    ``LITELLM_LOG=ERROR``, JSON logs, a master key, no retries (the gateway makes none). It records no call: its
    database logging needs Prisma's engines, which ``prisma generate`` downloads (binaries.prisma.sh), and this
    machine is offline. Returns the process, or why it cannot run."""
    executable = PEERS_VENV / "bin" / "litellm"
    if not executable.exists():
        return "no .venv-peers (scripts/setup-peers makes it)"
    config = workdir / "litellm.yaml"
    config.write_text(f"model_list:\n  - model_name: stub-model\n    litellm_params:\n      model: openai/stub-model\n"
                      f"      api_base: {stub_url}\n      api_key: unused\n"
                      "litellm_settings:\n  json_logs: true\n  num_retries: 0\n"
                      f"general_settings:\n  master_key: {LITELLM_KEY}\n")
    CALLER_HEADERS[f"http://127.0.0.1:{port}/v1"] = {"Authorization": f"Bearer {LITELLM_KEY}"}
    env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "PYTHONPATH")}
    return subprocess.Popen([str(executable), "--config", str(config), "--port", str(port), "--num_workers",
                             str(workers)], env={**env, "LITELLM_LOG": "ERROR"}, cwd=workdir,
                            stdout=subprocess.DEVNULL, stderr=(workdir / "litellm.log").open("w"))


def start_nginx(stub_url: str, port: int, workers: int, workdir: Path) -> subprocess.Popen | str:
    """nginx as a plain reverse proxy: ``worker_processes`` N, ``proxy_buffering off``, keep-alive to the upstream,
    and its access log (buffered, as production sets it) as its record of the calls. Returns the process, or why it
    cannot run."""
    binary = shutil.which("nginx") or shutil.which("/usr/sbin/nginx")
    if binary is None:
        return "no nginx (scripts/setup-peers installs Debian's)"
    prefix = workdir / "nginx"
    prefix.mkdir()
    upstream = stub_url.removeprefix("http://").removesuffix("/v1")
    temp = " ".join(f"{kind}_temp_path {prefix / kind};"
                    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (prefix / "nginx.conf").write_text(f"""
{"user root;" if os.geteuid() == 0 else ""}
worker_processes {workers};
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{ worker_connections 4096; }}
http {{
    access_log {prefix / "access.log"} combined buffer=256k flush=1s;
    {temp}
    upstream stub {{ server {upstream}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://stub;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
""")
    return subprocess.Popen([binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL)


def overhead(args: argparse.Namespace) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    db = args.db or f"sqlite:///{workdir / 'logs.db'}"
    env = {**os.environ, "DISTILLERY_HOME": str(workdir), "DISTILLERY_LOG_STORE_URL": db, "PYTHONPATH": str(ROOT)}
    workload = f"bench-{uuid.uuid4().hex[:8]}"
    stub, stub_url = start([sys.executable, STUB_PROVIDER, "100"], env)
    port, bare_port, uvicorn_port, workers_port, litellm_port, nginx_port = free_ports(6)
    gateway = start_gateway(stub_url, port, env)
    gateway_url = f"http://127.0.0.1:{port}/v1"
    bare = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "bare_proxy.py"), stub_url, str(bare_port)],
                            env=env)
    bare_url = f"http://127.0.0.1:{bare_port}/v1"
    uvicorn_url, uvicorn_workload = f"http://127.0.0.1:{uvicorn_port}/v1", f"{workload}-uvicorn"
    workers_url, workers_workload = f"http://127.0.0.1:{workers_port}/v1", f"{workload}-workers"
    on_uvicorn = many = None
    peers: dict[str, tuple[str, subprocess.Popen]] = {}
    try:
        wait_until_up(f"http://127.0.0.1:{port}/healthz", gateway)
        # Only now: the first gateway has migrated the log store, which two processes must not do at once.
        on_uvicorn = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "gateway_on_uvicorn.py"), stub_url,
                                       str(uvicorn_port)], env=env)
        wait_until_up(f"http://127.0.0.1:{bare_port}/healthz", bare)
        wait_until_up(f"http://127.0.0.1:{uvicorn_port}/healthz", on_uvicorn)
        if args.workers > 1:  # a second gateway, with workers, on its own journal and the same log store
            many = start_gateway(stub_url, workers_port, {**env, "DISTILLERY_HOME": str(workdir / "workers")},
                                 args.workers)
            wait_until_up(f"http://127.0.0.1:{workers_port}/healthz", many)
        peers_missing = {}
        if args.peers:  # each with as many workers as the gateway's side with workers
            for name, starter, health, peer_port in (("litellm", start_litellm, "/health/liveliness", litellm_port),
                                                     ("nginx", start_nginx, "/healthz", nginx_port)):
                started = starter(stub_url, peer_port, args.workers, workdir)
                if isinstance(started, str):
                    peers_missing[name] = started
                    continue
                peers[name] = (f"http://127.0.0.1:{peer_port}/v1", started)
                wait_until_up(f"http://127.0.0.1:{peer_port}{health}", started)
            print(f"peers: {', '.join(peers) or 'none'}"
                  + "".join(f"; {name} left out: {why}" for name, why in peers_missing.items()), file=sys.stderr)

        loop = uvloop.new_event_loop()
        warmed = [gateway_url, *([workers_url] if many else []), *(url for url, _ in peers.values())]
        for url in warmed:  # imports and pools warm before measuring
            loop.run_until_complete(throughput(url, 200, 16, f"{workload}-warm-up", args.mix))
        direct_ms, gateway_ms = loop.run_until_complete(
            sequential_latencies(stub_url, gateway_url, args.latency_samples, workload, args.mix))
        added_ms = {}  # a peer's latency added: its own interleaved run against direct calls
        for name, (url, _) in peers.items():
            direct_for_peer, peer_ms = loop.run_until_complete(
                sequential_latencies(stub_url, url, args.latency_samples, workload, args.mix))
            added_ms[name] = (round(statistics.median(peer_ms) - statistics.median(direct_for_peer), 3),
                              round(percentile(peer_ms, 99) - percentile(direct_for_peer, 99), 3))

        during = None
        if args.outage_seconds:
            db_url = sa.make_url(db)
            admin = sa.create_engine(db_url.set(database="postgres"), isolation_level="AUTOCOMMIT")

            async def during():
                await asyncio.sleep(1)
                set_connections(admin, db_url.database, False)
                await asyncio.sleep(args.outage_seconds)
                set_connections(admin, db_url.database, True)

        sides = {"direct": (stub_url, workload, None), "bare": (bare_url, workload, bare),
                 "gateway": (gateway_url, workload, gateway), "uvicorn": (uvicorn_url, uvicorn_workload, on_uvicorn)}
        if many:
            sides["workers"] = (workers_url, workers_workload, many)
        for name, (url, process) in peers.items():
            sides[name] = (url, f"{workload}-{name}", process)
        rounds: list[dict] = []
        failures = {name: 0 for name in sides}
        for round_ in range(args.rounds):
            figures = {}
            for name, (url, round_workload, process) in sides.items():
                cpu_before = cpu_seconds(process) if process else (0.0, 0.0)
                rps, failed = loop.run_until_complete(throughput(
                    url, args.requests, args.concurrency, round_workload, args.mix,
                    during if name == "gateway" and round_ == 0 else None))
                failures[name] += failed
                figures[name] = rps
                if process:
                    if name in ("gateway", "uvicorn", "workers"):
                        stored_all(url, workers=name == "workers")  # the writer's work belongs to this round
                    main, other = (after - before for after, before in zip(cpu_seconds(process), cpu_before))
                    figures[f"{name}_cpu_us"] = (main + other) / args.requests * 1e6
                    figures[f"{name}_writer_cpu_us"] = other / args.requests * 1e6
            rounds.append(figures)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    finally:
        for process in (gateway, on_uvicorn, many, *(process for _, process in peers.values())):
            if process is not None:
                stop(process)
        for process in (bare, stub):  # they keep nothing
            stop(process, grace_s=5)

    def median(key) -> float:
        return statistics.median(key(figures) for figures in rounds)

    sent = args.latency_samples + args.rounds * args.requests  # the gateway's share of the latency phase, the rounds
    store = sa.create_engine(db)
    count = sa.text("SELECT count(*) FROM exchanges WHERE workload = :w")
    with store.connect() as conn:
        stored = conn.execute(count, {"w": workload}).scalar()
        stored_via_uvicorn = conn.execute(count, {"w": uvicorn_workload}).scalar()
        stored_via_workers = conn.execute(count, {"w": workers_workload}).scalar()
    still_journaled = journal_lines(workdir)
    return {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "mix": args.mix,
        "db": sa.make_url(db).get_backend_name(),
        "outage_seconds": args.outage_seconds,
        "direct_p50_ms": round(statistics.median(direct_ms), 3),
        "gateway_p50_ms": round(statistics.median(gateway_ms), 3),
        "p50_added_ms": round(statistics.median(gateway_ms) - statistics.median(direct_ms), 3),
        "p99_added_ms": round(percentile(gateway_ms, 99) - percentile(direct_ms, 99), 3),
        "direct_rps": round(median(lambda f: f["direct"])),
        "bare_proxy_rps": round(median(lambda f: f["bare"])),
        "gateway_rps": round(median(lambda f: f["gateway"])),
        "uvicorn_rps": round(median(lambda f: f["uvicorn"])),
        "throughput_ratio": round(median(lambda f: f["gateway"] / f["direct"]), 3),
        "bare_proxy_ratio": round(median(lambda f: f["bare"] / f["direct"]), 3),
        "gateway_vs_bare": round(median(lambda f: f["gateway"] / f["bare"]), 3),
        "uvicorn_throughput_ratio": round(median(lambda f: f["uvicorn"] / f["direct"]), 3),
        "uvicorn_vs_hand_written": round(median(lambda f: f["uvicorn"] / f["gateway"]), 3),
        "throughput_ratio_by_round": [round(f["gateway"] / f["direct"], 3) for f in rounds],
        "gateway_vs_bare_by_round": [round(f["gateway"] / f["bare"], 3) for f in rounds],
        "bare_cpu_us": round(median(lambda f: f["bare_cpu_us"]), 1),
        "gateway_cpu_us": round(median(lambda f: f["gateway_cpu_us"]), 1),
        "gateway_writer_cpu_us": round(median(lambda f: f["gateway_writer_cpu_us"]), 1),
        "uvicorn_cpu_us": round(median(lambda f: f["uvicorn_cpu_us"]), 1),
        "client_failures_direct": failures["direct"],
        "client_failures_gateway": failures["gateway"],
        "sent_through_gateway": sent,
        "stored": stored,
        "journaled": int(gauge(metrics, "distillery_gateway_rows_journaled")),
        "still_in_journal": still_journaled,
        "lost": sent - stored - still_journaled,
        "uvicorn_lost": args.rounds * args.requests - stored_via_uvicorn,
        **peer_figures(args, peers, added_ms, peers_missing, workdir, many is not None,
                       stored_via_workers if many else stored,
                       statistics.median(gateway_ms) - statistics.median(direct_ms), median),
        **({"workers": args.workers,
            "workers_rps": round(median(lambda f: f["workers"])),
            "workers_vs_one": round(median(lambda f: f["workers"] / f["gateway"]), 3),
            "workers_vs_direct": round(median(lambda f: f["workers"] / f["direct"]), 3),
            "workers_vs_one_by_round": [round(f["workers"] / f["gateway"], 3) for f in rounds],
            "workers_cpu_us": round(median(lambda f: f["workers_cpu_us"]), 1),
            "client_failures_workers": failures["workers"],
            "workers_lost": args.rounds * args.requests - stored_via_workers} if many else {}),
    }


def peer_figures(args, peers, added_ms, peers_missing, workdir: Path, with_workers: bool, calls_recorded: int,
                 gateway_p50_added_ms: float, median: Callable[[Callable[[dict], float]], float]) -> dict:
    """Each peer beside the gateway: requests/s, latency and CPU per request added, calls recorded; and the ratios the
    issue names, against the gateway's side with as many workers (the one-process gateway when there is none)."""
    if not args.peers:
        return {}
    ours = "workers" if with_workers else "gateway"
    figures: dict = {"peers_missing": peers_missing, "compared_side": ours}
    recorded = {"litellm": 0, "nginx": None}
    access_log = workdir / "nginx" / "access.log"
    if "nginx" in peers and access_log.exists():
        recorded["nginx"] = sum(1 for _ in access_log.open())
    for name in peers:
        figures.update({
            f"{name}_rps": round(median(lambda f: f[name])),
            f"{name}_cpu_us": round(median(lambda f: f[f"{name}_cpu_us"]), 1),
            f"{name}_p50_added_ms": added_ms[name][0],
            f"{name}_p99_added_ms": added_ms[name][1],
            f"{name}_calls_recorded": recorded[name],
            f"vs_{name}_rps": round(median(lambda f: f[ours] / f[name]), 3),
        })
    if "litellm" in peers:
        figures["litellm_records_calls"] = "no: its database logging needs Prisma's engines, downloaded at setup " \
                                           "(binaries.prisma.sh); this machine is offline, so it runs as a pure proxy"
        figures["p50_added_vs_litellm"] = round(gateway_p50_added_ms / added_ms["litellm"][0], 3) \
            if added_ms["litellm"][0] > 0 else None
    figures[f"{ours}_calls_recorded"] = calls_recorded
    return figures


async def probe_calls(url: str, callers: int, answered: set[str], stop: asyncio.Event) -> tuple[int, int]:
    """Calls from ``callers`` callers until ``stop``: each one's id goes into ``answered`` once it is answered 200.
    Returns the calls sent and those that met a connection error."""
    sent = errors = 0

    async def caller(session: aiohttp.ClientSession) -> None:
        nonlocal sent, errors
        while not stop.is_set():
            probe = uuid.uuid4().hex
            sent += 1
            try:
                if await one_call(session, url, sent, "killed", metadata={"probe": probe}):
                    answered.add(probe)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                errors += 1
                await asyncio.sleep(0.01)  # the gateway is gone: what was in flight was never answered

    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=callers), timeout=timeout) as session:
        await asyncio.gather(*(caller(session) for _ in range(callers)))
    return sent, errors


def kill_run(seed: int, callers: int, kill_after: tuple[float, float], workers: int = 1) -> dict:
    """One kill -9 under load: of the gateway, then a restart on the same journal; or, with ``workers`` > 1, of one
    worker, which the gateway starts again while the others serve on. Counts the calls answered 200 that are not
    stored, and the calls that met a connection error (at most those in flight on what was killed)."""
    workdir = Path(tempfile.mkdtemp(prefix="gateway-kill-"))
    db = f"sqlite:///{workdir / 'logs.db'}"
    env = {**os.environ, "DISTILLERY_HOME": str(workdir), "DISTILLERY_LOG_STORE_URL": db, "PYTHONPATH": str(ROOT)}
    stub, stub_url = start([sys.executable, STUB_PROVIDER, "100"], env)
    [port] = free_ports(1)
    answered: set[str] = set()
    restarted_worker = None
    try:
        gateway = start_gateway(stub_url, port, env, workers)
        wait_until_up(f"http://127.0.0.1:{port}/healthz", gateway)
        if workers > 1:
            while len(worker_pids(gateway)) < workers:
                time.sleep(0.05)
        load_over = asyncio.Event()
        after_s = random.Random(seed).uniform(*kill_after)
        killed: list[int] = []
        held: list[int] = []

        async def kill_then_stop() -> None:
            await asyncio.sleep(after_s)
            if workers > 1:
                killed.append(worker_pids(gateway)[0])
                held.append(callers_connected(killed[0], port))
                os.kill(killed[0], signal.SIGKILL)
                await asyncio.sleep(1.5)  # the others serve on, and the killed one comes back
            else:
                gateway.send_signal(signal.SIGKILL)
                await asyncio.sleep(0.3)  # callers see the connections drop
            load_over.set()

        async def load() -> tuple[int, int]:
            killer = asyncio.create_task(kill_then_stop())
            sent = await probe_calls(f"http://127.0.0.1:{port}/v1", callers, answered, load_over)
            await killer
            return sent

        sent, errors = uvloop.new_event_loop().run_until_complete(load())
        if workers > 1:
            pids = worker_pids(gateway)
            restarted_worker = len(pids) == workers and killed[0] not in pids
            time.sleep(0.6)  # every worker publishes its numbers
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(120)
        else:
            gateway.wait(30)
            restarted = start_gateway(stub_url, port, env)  # the same DISTILLERY_HOME: the same journal
            wait_until_up(f"http://127.0.0.1:{port}/healthz", restarted)
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
            restarted.send_signal(signal.SIGTERM)
            restarted.wait(120)
    finally:
        stop(stub, grace_s=5)
    with sa.create_engine(db).connect() as conn:
        stored = {json.loads(params).get("metadata", {}).get("probe") for (params,) in conn.execute(
            sa.text("SELECT request_params FROM exchanges WHERE workload = 'killed'"))}
    recovered = gauge(metrics, "distillery_gateway_rows_recovered")
    return {"killed_after_s": round(after_s, 2), "sent": sent, "answered_200": len(answered),
            "connection_errors": errors, "callers": callers, "recovered_on_restart": int(recovered),
            "missing": len(answered - stored),
            **({"worker_started_again": restarted_worker, "connections_on_killed_worker": held[0]}
               if workers > 1 else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-samples", type=int, default=1000)
    parser.add_argument("--db", help="log store URL; default: a new SQLite file")
    parser.add_argument("--outage-seconds", type=float, default=0, help="PostgreSQL only")
    parser.add_argument("--mix", choices=sorted(MIXES), default="default", help="the calls sent (see above)")
    parser.add_argument("--workers", type=int, default=1,
                        help="N > 1: also a gateway with N workers (a side of its own); with --kill, kill one of them")
    parser.add_argument("--peers", action="store_true",
                        help="also LiteLLM's proxy and nginx, each with --workers workers (scripts/setup-peers)")
    parser.add_argument("--kill", action="store_true", help="kill -9 the gateway under load instead")
    parser.add_argument("--runs", type=int, default=5, help="with --kill")
    parser.add_argument("--quick", action="store_true", help="a few seconds: small numbers, for the tests")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.concurrency, args.rounds, args.latency_samples, args.runs = 300, 16, 1, 30, 1
    if args.kill:
        runs = [kill_run(seed, callers=16, kill_after=(0.5, 1.5) if not args.quick else (0.3, 0.6),
                         workers=args.workers) for seed in range(args.runs)]
        result = {"workers": args.workers, "runs": runs, "answered_200": sum(r["answered_200"] for r in runs),
                  "missing": sum(r["missing"] for r in runs),
                  "connection_errors": sum(r["connection_errors"] for r in runs),
                  **({"connections_on_killed_workers": sum(r["connections_on_killed_worker"] for r in runs)}
                     if args.workers > 1 else {})}
    else:
        result = overhead(args)
    print(json.dumps({**result, "quick": args.quick}))


if __name__ == "__main__":
    main()
