"""The gateway's Prometheus metrics: plain numbers on the request path, read by ``prometheus_client`` at scrape time.

Why not ``prometheus_client``'s Counter and Histogram on the request path: each ``inc``/``observe`` takes a lock,
and a labelled child is a dictionary look-up behind ``labels()``; with five of them per call they cost ~16 µs a
call, a tenth of the gateway's whole CPU per call (benchmarks/gateway.py, 2026-12-02: 137 µs a call with them,
121 µs without). Here a call adds to a ``defaultdict`` (the event loop is the only writer), and the collector
turns the numbers into metric families when ``/metrics`` is read. Names, labels and types are those of the
counters and histogram they replace.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

if TYPE_CHECKING:
    from distillery.capture import Recorder

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class GatewayMetrics:
    def __init__(self, recorder: Recorder):
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
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self, recorder))

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


class _Collector:
    def __init__(self, metrics: GatewayMetrics, recorder: Recorder):
        self._metrics = metrics
        self._recorder = recorder

    def collect(self) -> Iterator[Metric]:
        m, recorder = self._metrics, self._recorder
        yield _counter("distillery_gateway_requests", "Proxied requests", ["endpoint", "status"], m.requests)
        yield _counter("distillery_gateway_errors", "Failed requests by cause", ["cause"], m.errors)
        yield _counter("distillery_gateway_served", "Chat completions by who answered them", ["workload", "served_by"],
                       m.served)
        yield _counter("distillery_gateway_fallbacks", "Small-model failures answered by the frontier", ["workload"],
                       m.fallbacks)
        yield _counter("distillery_gateway_cascade_covered", "Cascade calls the small model answered alone (confidence "
                       "at or above the route's threshold)", ["workload"], m.covered)
        yield _counter("distillery_gateway_cascade_escalated", "Cascade calls the frontier answered because the small "
                       "model's confidence was below the threshold", ["workload"], m.escalated)
        yield _counter("distillery_gateway_cascade_audited", "Covered cascade calls also answered by the frontier off "
                       "the caller's path, by whether the answers agreed", ["workload", "outcome"], m.audited)
        yield _counter("distillery_gateway_rollbacks", "Automatic route rollbacks", ["workload"], m.rollbacks)
        yield _counter(
            "distillery_gateway_frontier_usd", "Answered chat completions at the frontier's list price: paid "
            "(served_by=frontier) or avoided (served_by=small: the price of the model the caller asked for, on the "
            "small model's tokens)", ["workload", "served_by"], m.frontier_usd)
        latency = HistogramMetricFamily("distillery_gateway_request_seconds", "Request latency through the gateway",
                                        labels=["endpoint"])
        for endpoint, counts in list(m.latency.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*map(str, LATENCY_BUCKETS), "+Inf"), counts):
                cumulative += count
                buckets.append((bound, cumulative))
            latency.add_metric([endpoint], buckets, m.latency_sum[endpoint])
        yield latency
        for name, doc, value in [
            ("distillery_gateway_queue_depth", "Rows waiting for the writer", recorder.pending),
            ("distillery_gateway_rows_received", "Rows handed to the recorder", recorder.received),
            ("distillery_gateway_rows_written", "Rows written to the log store directly", recorder.written),
            ("distillery_gateway_rows_journaled", "Rows the log store refused, kept in the local journal",
             recorder.journaled),
            ("distillery_gateway_rows_replayed", "Journaled rows since replayed into the store", recorder.replayed),
            ("distillery_gateway_rows_recovered", "Rows a process that died left in the journal, stored on this start",
             recorder.recovered),
            ("distillery_gateway_rows_rejected", "Rows the log store cannot take, kept in <journal>.rejected",
             recorder.rejected),
            ("distillery_gateway_database_up", "1 while the log store accepts writes", int(recorder.database_up)),
        ]:
            yield GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, documentation: str, labels: list[str], values: dict) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=labels)
    for key, value in list(values.items()):
        family.add_metric(list(key) if isinstance(key, tuple) else [key], value)
    return family
