"""The gateway's Prometheus metrics: plain numbers on the request path, read by ``prometheus_client`` at scrape time.

Why not ``prometheus_client``'s Counter and Histogram on the request path: each ``inc``/``observe`` takes a lock,
and a labelled child is a dictionary look-up behind ``labels()``; with five of them per call they cost ~16 µs a
call, a tenth of the gateway's whole CPU per call (benchmarks/gateway.py, 2026-12-02: 137 µs a call with them,
121 µs without). Here a call adds to a ``defaultdict`` (the event loop is the only writer), and the collector
turns the numbers into metric families when ``/metrics`` is read. Names, labels and types are those of the
counters and histogram they replace.

With several workers (``distillery.gateway.workers``) a scrape reaches one of them, so each worker leaves its
numbers for the others (``WorkerShare``: a file per worker, rewritten every ``interval_s``) and the one scraped
answers the sum: its own numbers as they are now, the others' as of at most ``interval_s`` ago. A worker that
restarts carries on from the numbers its predecessor left, so every counter of the sum only grows. The same
names and labels as one process; ``distillery_gateway_database_up`` is the lowest over the workers.
"""

from __future__ import annotations

import bisect
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

if TYPE_CHECKING:
    from distillery.capture import Recorder

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# Each counter of the request path: its metric, help and labels.
COUNTERS = {
    "requests": ("distillery_gateway_requests", "Proxied requests", ["endpoint", "status"]),
    "errors": ("distillery_gateway_errors", "Failed requests by cause", ["cause"]),
    "served": ("distillery_gateway_served", "Chat completions by who answered them", ["workload", "served_by"]),
    "fallbacks": ("distillery_gateway_fallbacks", "Small-model failures answered by the frontier", ["workload"]),
    "covered": ("distillery_gateway_cascade_covered", "Cascade calls the small model answered alone (confidence at or "
                "above the route's threshold)", ["workload"]),
    "escalated": ("distillery_gateway_cascade_escalated", "Cascade calls the frontier answered because the small "
                  "model's confidence was below the threshold", ["workload"]),
    "audited": ("distillery_gateway_cascade_audited", "Covered cascade calls also answered by the frontier off the "
                "caller's path, by whether the answers agreed", ["workload", "outcome"]),
    "rollbacks": ("distillery_gateway_rollbacks", "Automatic route rollbacks", ["workload"]),
    "frontier_usd": ("distillery_gateway_frontier_usd", "Answered chat completions at the frontier's list price: paid "
                     "(served_by=frontier) or avoided (served_by=small: the price of the model the caller asked for, "
                     "on the small model's tokens)", ["workload", "served_by"]),
}
# The recorder's numbers: (metric, help, whether it only grows: a restarted worker carries it on).
RECORDER_GAUGES = {
    "pending": ("distillery_gateway_queue_depth", "Rows waiting for the writer", False),
    "received": ("distillery_gateway_rows_received", "Rows handed to the recorder", True),
    "written": ("distillery_gateway_rows_written", "Rows written to the log store directly", True),
    "journaled": ("distillery_gateway_rows_journaled", "Rows the log store refused, kept in the local journal", True),
    "replayed": ("distillery_gateway_rows_replayed", "Journaled rows since replayed into the store", True),
    "recovered": ("distillery_gateway_rows_recovered", "Rows a process that died left in the journal, stored on this "
                  "start", True),
    "rejected": ("distillery_gateway_rows_rejected", "Rows the log store cannot take, kept in <journal>.rejected",
                 True),
}
DATABASE_UP = ("distillery_gateway_database_up", "1 while the log store accepts writes")


class GatewayMetrics:
    def __init__(self, recorder: Recorder, share: WorkerShare | None = None):
        self.requests: defaultdict[tuple[str, str], int] = defaultdict(int)  # (endpoint, status)
        self.errors: defaultdict[str, int] = defaultdict(int)  # cause
        self.served: defaultdict[tuple[str, str], int] = defaultdict(int)  # (workload, served_by)
        self.fallbacks: defaultdict[str, int] = defaultdict(int)  # workload
        # cascade routes: calls the small model answered alone, calls escalated to the frontier, audited calls
        self.covered: defaultdict[str, int] = defaultdict(int)  # workload
        self.escalated: defaultdict[str, int] = defaultdict(int)  # workload
        self.audited: defaultdict[tuple[str, str], int] = defaultdict(int)  # (workload, agreed or disagreed)
        self.rollbacks: defaultdict[str, int] = defaultdict(int)  # workload
        self.frontier_usd: defaultdict[tuple[str, str], float] = defaultdict(float)  # (workload, served_by)
        # endpoint -> calls per latency bucket (the last one: above every bound), and their sum in seconds
        self.latency: dict[str, list[int]] = {}
        self.latency_sum: defaultdict[str, float] = defaultdict(float)
        self.recorder = recorder
        self.share = share
        self._carried = share.previous() if share else None  # what this worker's predecessor had counted
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self))

    def count(self, endpoint: str, status: int, cause: str | None = None, seconds: float | None = None) -> None:
        """One answered call: its status, why it failed, how long it took."""
        self.requests[endpoint, str(status)] += 1
        if cause:
            self.errors[cause] += 1
        if seconds is not None:
            buckets = self.latency.get(endpoint)
            if buckets is None:
                buckets = self.latency[endpoint] = [0] * (len(LATENCY_BUCKETS) + 1)
            buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self.latency_sum[endpoint] += seconds

    def state(self) -> dict:
        """Every number, as plain JSON (label values as lists): this process's, plus what its predecessor left."""
        recorder = self.recorder
        state = {
            "counters": {name: [[_labels(key), value] for key, value in list(getattr(self, name).items())]
                         for name in COUNTERS},
            "latency": [[endpoint, list(counts), self.latency_sum[endpoint]]
                        for endpoint, counts in list(self.latency.items())],
            "recorder": {name: getattr(recorder, name) for name in RECORDER_GAUGES},
            "database_up": int(recorder.database_up),
        }
        return merge([state, _carried_on(self._carried)]) if self._carried else state

    def publish(self) -> None:
        """Leave this worker's numbers for the others (a no-op in a single process)."""
        if self.share:
            self.share.write(self.state())


def merge(states: list[dict]) -> dict:
    """The sum of several states (``GatewayMetrics.state``); the database is up when it is up for all of them."""
    counters: dict[str, defaultdict] = {name: defaultdict(float) for name in COUNTERS}
    latency: dict[str, list] = {}
    for state in states:
        for name, rows in state["counters"].items():
            for labels, value in rows:
                counters[name][tuple(labels)] += value
        for endpoint, counts, seconds in state["latency"]:
            total = latency.setdefault(endpoint, [[0] * len(counts), 0.0])
            total[0] = [a + b for a, b in zip(total[0], counts)]
            total[1] += seconds
    return {
        "counters": {name: [[list(key), value] for key, value in values.items()] for name, values in counters.items()},
        "latency": [[endpoint, counts, seconds] for endpoint, (counts, seconds) in latency.items()],
        "recorder": {name: sum(state["recorder"].get(name, 0) for state in states) for name in RECORDER_GAUGES},
        "database_up": min(state["database_up"] for state in states),
    }


def _carried_on(previous: dict) -> dict:
    """What a restarted worker adds to its own numbers: its predecessor's, less what was true only of that moment."""
    return {**previous, "recorder": {name: value for name, value in previous["recorder"].items()
                                     if RECORDER_GAUGES[name][2]}, "database_up": 1}


def _labels(key) -> list[str]:
    return list(key) if isinstance(key, tuple) else [key]


class WorkerShare:
    """Where the workers of one gateway leave their numbers for each other: ``worker-<index>.json`` each in
    ``folder``, replaced whole (written aside, then renamed) so a reader never sees half of one."""

    def __init__(self, folder: Path, index: int, interval_s: float = 0.5):
        self.folder = Path(folder)
        self.index = index
        self.interval_s = interval_s
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, index: int) -> Path:
        return self.folder / f"worker-{index}.json"

    def previous(self) -> dict | None:
        return self._read(self._path(self.index))

    def write(self, state: dict) -> None:
        aside = self.folder / f".worker-{self.index}.json.{os.getpid()}"
        aside.write_bytes(json.dumps(state).encode())
        os.replace(aside, self._path(self.index))

    def others(self) -> list[dict]:
        return [state for path in sorted(self.folder.glob("worker-*.json")) if path != self._path(self.index)
                if (state := self._read(path)) is not None]

    @staticmethod
    def _read(path: Path) -> dict | None:
        try:
            return json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None


class _Collector:
    def __init__(self, metrics: GatewayMetrics):
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        state = metrics.state()
        if metrics.share:
            state = merge([state, *metrics.share.others()])
        for name, rows in state["counters"].items():
            metric, documentation, labels = COUNTERS[name]
            family = CounterMetricFamily(metric, documentation, labels=labels)
            for label_values, value in rows:
                family.add_metric(label_values, value)
            yield family
        latency = HistogramMetricFamily("distillery_gateway_request_seconds", "Request latency through the gateway",
                                        labels=["endpoint"])
        for endpoint, counts, seconds in state["latency"]:
            cumulative, buckets = 0, []
            for bound, count in zip((*map(str, LATENCY_BUCKETS), "+Inf"), counts):
                cumulative += count
                buckets.append((bound, cumulative))
            latency.add_metric([endpoint], buckets, seconds)
        yield latency
        for name, (metric, documentation, _) in RECORDER_GAUGES.items():
            yield GaugeMetricFamily(metric, documentation, value=state["recorder"][name])
        yield GaugeMetricFamily(*DATABASE_UP, value=state["database_up"])
