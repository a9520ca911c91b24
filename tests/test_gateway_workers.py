"""`distillery gateway --workers 2`: real processes sharing one port, the real openai client, a real SQLite store."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import openai
import pytest
from support.stub_provider import StubUpstream

from distillery.routing import SMALL, Route, RouteStore, canary_bucket
from distillery.store import LogStore


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Workers:
    def __init__(self, process: subprocess.Popen, url: str, journal: Path, store: LogStore):
        self.process, self.url, self.journal, self.store = process, url, journal, store

    def pids(self) -> list[int]:
        pid = self.process.pid
        return sorted(int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())

    def client(self) -> openai.OpenAI:
        """A client of its own: a new connection, which the kernel gives to either worker. No retries: an error
        counts."""
        return openai.OpenAI(base_url=self.url, api_key="unused", max_retries=0, timeout=30)

    def metrics(self) -> str:
        return urllib.request.urlopen(self.url.removesuffix("/v1") + "/metrics").read().decode()

    def worker_requests(self) -> list[float]:
        """Each worker's own count of answered calls, as it last left it for the others."""
        counts = []
        for path in sorted((self.journal.parent / f"{self.journal.name}.workers" / "metrics").glob("worker-*.json")):
            counters = json.loads(path.read_text())["counters"]["requests"]
            counts.append(sum(value for labels, value in counters if labels[0] == "chat.completions"))
        return counts


@contextmanager
def gateway_workers(tmp_path: Path, upstream_url: str, *, workers: int = 2, rollback: str = "") -> Iterator[Workers]:
    port, journal, database = _free_port(), tmp_path / "journal.jsonl", tmp_path / "logs.db"
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\nport = {port}\nrequire_api_key = false\njournal_path = "{journal}"\n'
                      f'log_store_url = "sqlite:///{database}"\nroute_refresh_s = 0.5\nworkers = {workers}\n'
                      f'[upstreams.stub]\nbase_url = "{upstream_url}"\ndefault = true\n{rollback}')
    process = subprocess.Popen([sys.executable, "-m", "distillery.cli", "gateway", "--config", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    running = Workers(process, f"http://127.0.0.1:{port}/v1", journal, LogStore(f"sqlite:///{database}"))
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, process.stderr.read()
        try:
            urllib.request.urlopen(running.url.removesuffix("/v1") + "/healthz", timeout=2)
            if len(running.pids()) == workers:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "the workers did not come up"
        time.sleep(0.1)
    try:
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(90)
        finally:
            process.kill()


@pytest.fixture
def provider():
    stub = StubUpstream().start()
    yield stub
    stub.stop()


def _ask(client: openai.OpenAI, text: str, user: str | None = None) -> str:
    messages = [{"role": "user", "content": text}]
    return client.chat.completions.create(model="gpt-x", messages=messages, **({"user": user} if user else {})) \
        .choices[0].message.content


def test_two_workers_answer_on_one_port_and_metrics_and_rows_add_up(tmp_path, provider):
    with gateway_workers(tmp_path, provider.url) as gateway:
        answers = [_ask(gateway.client(), f"call {i}") for i in range(40)]
        time.sleep(1.2)  # each worker leaves its numbers for the others every 0.5 s
        metrics = gateway.metrics()
        per_worker = gateway.worker_requests()
    assert answers == ["ok"] * 40
    assert 'distillery_gateway_requests_total{endpoint="chat.completions",status="200"} 40.0' in metrics
    # Both workers answered (a worker left out of 40 new connections: 1 chance in 2^39), and the sum is theirs.
    assert len(per_worker) == 2 and all(count > 0 for count in per_worker) and sum(per_worker) == 40
    # Every call is stored once: the workers' row ids do not collide (they did when a fork kept the parent's prefix).
    rows = gateway.store.read("default")
    assert sorted(m[0]["content"] for m in rows["request_messages"]) == sorted(f"call {i}" for i in range(40))


def test_a_worker_killed_under_load_loses_no_answered_call_and_comes_back(tmp_path, provider):
    answered: list[str] = []
    errors: list[str] = []
    stop = threading.Event()

    def caller(name: str, gateway: Workers) -> None:
        n = 0
        while not stop.is_set():
            text = f"{name}-{n}"
            n += 1
            try:
                if _ask(gateway.client(), text) == "ok":
                    answered.append(text)
            except openai.APIConnectionError:
                errors.append(text)

    with gateway_workers(tmp_path, provider.url) as gateway:
        before = gateway.pids()
        callers = [threading.Thread(target=caller, args=(f"c{i}", gateway)) for i in range(4)]
        for thread in callers:
            thread.start()
        while len(answered) < 20:
            time.sleep(0.05)
        os.kill(before[0], signal.SIGKILL)
        killed_at = len(answered)
        deadline = time.monotonic() + 30
        while not (len(gateway.pids()) == 2 and before[0] not in gateway.pids() and len(answered) > killed_at + 40):
            assert time.monotonic() < deadline, "the killed worker was not started again"
            time.sleep(0.05)
        stop.set()
        for thread in callers:
            thread.join(30)
        after = gateway.pids()
    assert before[1] in after and before[0] not in after  # the other worker served on; the killed one was replaced
    assert len(errors) <= 4  # at most the calls in flight on the killed worker, one per caller
    stored = {m[0]["content"] for m in gateway.store.read("default")["request_messages"]}
    assert set(answered) <= stored  # every answered call is in the log store


def test_a_route_one_worker_steps_back_is_obeyed_by_the_other_within_the_refresh(tmp_path, provider):
    routes_db = tmp_path / "logs.db"
    rollback = "[rollback]\nmin_samples = 5\nmax_error_rate = 0.2\n"
    with gateway_workers(tmp_path, provider.url, rollback=rollback) as gateway:
        routes = RouteStore(LogStore(f"sqlite:///{routes_db}").engine)
        routes.set(Route("default", SMALL, 0, "http://127.0.0.1:9/v1", "default"), "test")  # nobody listens there
        time.sleep(1.0)  # both workers read the route
        one_worker = gateway.client()  # one connection, so one worker sees every failure and steps the route back
        assert [_ask(one_worker, f"early {i}", user=f"u{i}") for i in range(8)] == ["ok"] * 8  # the frontier's
        deadline = time.monotonic() + 10
        while routes.get("default").mode == SMALL:
            assert time.monotonic() < deadline, "the rollback was not stored"
            time.sleep(0.05)
        assert routes.get("default").label == "canary 50%"
        time.sleep(0.5 + 0.5 + 0.2)  # a refresh, and one publication of the workers' numbers
        fallbacks_before = _fallbacks(gateway.metrics())
        requests_before = gateway.worker_requests()
        # Callers the canary keeps on the frontier: a worker still on the old route would try the dead small model.
        frontier_side = [f"user-{i}" for i in range(400) if canary_bucket(f"user-{i}") >= 50][:30]
        assert all(_ask(gateway.client(), "late", user=user) == "ok" for user in frontier_side)
        time.sleep(1.2)
        requests_after = gateway.worker_requests()
        assert _fallbacks(gateway.metrics()) == fallbacks_before > 0
    assert all(after > before for after, before in zip(requests_after, requests_before))  # both workers were asked
    assert (routes.events("default")[0].kind, routes.events("default")[0].to_mode) == ("rollback", "canary 50%")


def _fallbacks(metrics: str) -> float:
    return sum(float(line.split()[-1]) for line in metrics.splitlines()
               if line.startswith("distillery_gateway_fallbacks_total"))


def test_bad_worker_counts_and_a_taken_port_are_refused_with_the_reason(tmp_path, provider):
    command = [sys.executable, "-m", "distillery.cli", "gateway", "--upstream", provider.url, "--no-require-api-key"]
    env = {**os.environ, "DISTILLERY_HOME": str(tmp_path)}
    refused = subprocess.run([*command, "--workers", "0"], capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode == 2 and "workers must be between 1 and" in refused.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = subprocess.run([*command, "--workers", "2", "--port", str(port)], capture_output=True, text=True,
                                 env=env, timeout=60)
    assert refused.returncode == 2 and f"port {port} on 127.0.0.1 is in use by another process" in refused.stderr
    with gateway_workers(tmp_path, provider.url) as gateway:  # a second gateway on the same journal
        second = subprocess.run([sys.executable, "-m", "distillery.cli", "gateway", "--config",
                                 str(tmp_path / "gateway.toml"), "--port", "0"], capture_output=True, text=True,
                                timeout=60)
        assert gateway.process.poll() is None
    assert second.returncode == 2 and "is in use by another recorder" in second.stderr
