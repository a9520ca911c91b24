"""Per-workload routes between the frontier and the small model, and automatic rollback.

A workload's route moves through four modes, each a step of the cut-over:

- ``frontier``: the frontier answers everything (also: no route stored);
- ``shadow``: the frontier answers; the small model gets a copy off the request path, and
  both answers are logged and compared;
- ``canary``: ``canary_percent`` of callers get the small model, chosen by a stable hash of a
  caller-supplied key (the ``X-Distillery-Route-Key`` header, else the body's ``user``), so a
  caller stays on one side while the percentage holds;
- ``small``: the small model answers everything.

Whenever the small model fails to answer (error, timeout, unreadable completion) or answers
something invalid for the workload (a label outside the set, a JSON object that does not
parse), the caller gets the frontier's answer instead: a cut-over never fails a request. ``RolloutMonitor`` watches a
sliding window of the small model's outcomes and, when a threshold is crossed, the route steps
back one mode (small -> canary -> shadow -> frontier) and the rollback is recorded as an event. A route whose
autopilot is on (``distillery.serving.autopilot``) also advances by itself, and steps back by its stages.
"""

from __future__ import annotations

import collections
import datetime as dt
import functools
import hashlib
import time
from dataclasses import dataclass, field, replace

import sqlalchemy as sa

from distillery.store import RouteEventRow, RouteRow
from distillery.tasks import Cascade, DecodingPolicy

FRONTIER, SHADOW, CANARY, SMALL = "frontier", "shadow", "canary", "small"
MODES = (FRONTIER, SHADOW, CANARY, SMALL)
ROUTE_KEY_HEADER = "x-distillery-route-key"


@dataclass(frozen=True)
class Approval:
    """What the gate approved for the deployed model, recorded with its route by the deployment: the autopilot's
    ceiling (its mode: full, or the cascade at the threshold it chose) and the agreement live traffic is held to."""

    mode: str  # "full" or "cascade"
    agreement: float  # the fine-tuned model's agreement with the frontier on the test split (a cascade's: covered rows)
    cascade: Cascade | None = None
    model_version: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("full", "cascade") or (self.mode == "cascade") != (self.cascade is not None):
            raise ValueError(f"an approval is full, or cascade with its cascade; got {self.mode!r}")
        if not 0 <= self.agreement <= 1:
            raise ValueError(f"an approval's agreement must be between 0 and 1, got {self.agreement!r}")

    def record(self) -> dict:
        return {"mode": self.mode, "agreement": self.agreement,
                "cascade": self.cascade.record() if self.cascade else None, "model_version": self.model_version}

    @classmethod
    def from_record(cls, record: dict | None) -> "Approval | None":
        if not record:
            return None
        return cls(record["mode"], record["agreement"], Cascade.from_record(record.get("cascade")),
                   record.get("model_version"))


@dataclass(frozen=True)
class Route:
    workload: str
    mode: str = FRONTIER
    canary_percent: float = 0.0
    small_url: str | None = None  # OpenAI base URL of the small-model server
    small_model: str | None = None  # the model name to ask it for (the workload's adapter)
    # How the small model decodes (sent with every call to it) and so what a valid answer is.
    policy: DecodingPolicy = DecodingPolicy()
    # A confidence cascade: of the calls the small model takes, it answers those it is sure of (at least the
    # threshold); the frontier answers the rest (escalated). None: it answers every call it takes.
    cascade: Cascade | None = None
    autopilot: bool = False  # advances and steps back by itself (distillery.serving.autopilot)
    approval: Approval | None = None  # what the gate approved for the deployed model
    epoch: int = field(default=0, compare=False)  # the route's changes so far, as stored (evidence is per epoch)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown route mode {self.mode!r}: use one of {', '.join(MODES)}")
        if not 0 <= self.canary_percent <= 100:
            raise ValueError(f"canary_percent must be between 0 and 100, got {self.canary_percent}")
        if self.mode != FRONTIER and not (self.small_url and self.small_model):
            raise ValueError(f"route {self.mode!r} for {self.workload!r} needs the small model's URL and name: "
                             "deploy the workload first (deployed_endpoint) or pass --url and --model")

    def valid_answer(self, text: str) -> bool:
        return self.policy.valid_answer(text)

    @functools.cached_property
    def small_model_request(self) -> dict:
        """What the gateway sets in a call's body for the small model: its name, and the policy as vLLM's
        ``structured_outputs`` (computed once per route; a caller's own ``response_format`` is replaced by it)."""
        constraint = self.policy.structured_outputs()
        return {"model": self.small_model, **({"structured_outputs": constraint} if constraint else {}),
                **({"logprobs": True} if self.cascade else {})}

    @property
    def label(self) -> str:
        mode = f"canary {self.canary_percent:g}%" if self.mode == CANARY else self.mode
        return f"{mode} (cascade at {self.cascade.threshold:.4g})" if self.cascade and self.mode != FRONTIER else mode

    def step_back(self) -> "Route":
        """One step towards the frontier: small -> canary (at least 10%) -> shadow -> frontier."""
        if self.mode == SMALL:
            return replace(self, mode=CANARY, canary_percent=self.canary_percent or 10.0)
        return replace(self, mode={CANARY: SHADOW, SHADOW: FRONTIER}.get(self.mode, FRONTIER))


def canary_bucket(key: str) -> float:
    """A stable position in [0, 100) for a caller key: the same key always lands on the same side."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % 10_000 / 100


def takes_small_model(route: Route | None, key: str) -> bool:
    if route is None or route.mode in (FRONTIER, SHADOW):
        return False
    return route.mode == SMALL or canary_bucket(key) < route.canary_percent


@dataclass(frozen=True)
class RouteEvent:
    workload: str
    kind: str  # "set" (a person, the CLI, the deploy), "rollback", "advance" (the autopilot), "autopilot" (on, off)
    from_mode: str | None
    to_mode: str
    reason: str
    created_at: dt.datetime
    evidence: dict | None = None  # an autopilot decision's (distillery.serving.autopilot.AutopilotPolicy.evidence_record)
    id: int = 0


@dataclass(frozen=True)
class Evidence:
    """A stage's sequential test so far: its compared calls, how many agreed, and the log-likelihood ratio of sound
    against worse (held at the step-back bound's size from above)."""

    calls: int = 0
    agreed: int = 0
    llr: float = 0.0

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.calls if self.calls else None


@dataclass(frozen=True)
class RouteState:
    """A stored route, the evidence of its current stage, and when that stage began."""

    route: Route
    evidence: Evidence
    since: dt.datetime


class RouteStore:
    """Routes and their history, in the log store's database."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine

    def get(self, workload: str) -> Route | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(RouteRow).where(RouteRow.workload == workload)).first()
        return _route(row) if row else None

    def all(self) -> dict[str, Route]:
        return {workload: state.route for workload, state in self.states().items()}

    def states(self) -> dict[str, RouteState]:
        with self.engine.connect() as conn:
            return {row.workload: _state(row) for row in conn.execute(sa.select(RouteRow))}

    def state(self, workload: str) -> RouteState | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(RouteRow).where(RouteRow.workload == workload)).first()
        return _state(row) if row else None

    def set(self, route: Route, reason: str, kind: str = "set", *, evidence: dict | None = None,
            expected_epoch: int | None = None) -> Route | None:
        """Store ``route`` as a new stage (its epoch moves on, its evidence starts over) and record the change with
        ``evidence``; returns the stored route. With ``expected_epoch``, only when the stored route is still at that
        epoch (else None: another gateway or a person changed it first)."""
        now = dt.datetime.now(dt.timezone.utc)
        values = {"mode": route.mode, "canary_percent": route.canary_percent, "small_url": route.small_url,
                  "small_model": route.small_model, "decoding_policy": route.policy.record(),
                  "cascade": route.cascade.record() if route.cascade else None, "updated_at": now,
                  "autopilot": route.autopilot, "approval": route.approval.record() if route.approval else None,
                  "evidence_calls": 0, "evidence_agreed": 0, "evidence_llr": 0.0}
        with self.engine.begin() as conn:
            before = conn.execute(sa.select(RouteRow).where(RouteRow.workload == route.workload)).first()
            if expected_epoch is not None and (before is None or before.epoch != expected_epoch):
                return None
            epoch = before.epoch + 1 if before else 0
            if before:
                changed = conn.execute(sa.update(RouteRow).where(
                    RouteRow.workload == route.workload, RouteRow.epoch == before.epoch).values(epoch=epoch, **values))
                if changed.rowcount != 1:  # changed since it was read
                    return None
            else:
                conn.execute(sa.insert(RouteRow).values(workload=route.workload, epoch=epoch, **values))
            conn.execute(sa.insert(RouteEventRow).values(
                workload=route.workload, kind=kind, from_mode=_route(before).label if before else None,
                to_mode=route.label, reason=reason, created_at=now, evidence=evidence))
        return replace(route, epoch=epoch)

    def add_evidence(self, workload: str, epoch: int, calls: int, agreed: int, llr: float, cap: float) -> bool:
        """Add compared calls to the route's current stage test in one update (gateways' counts pool, none is lost);
        False when the route has moved past ``epoch`` (the counts belong to a stage that is over)."""
        total = RouteRow.evidence_llr + llr
        with self.engine.begin() as conn:
            changed = conn.execute(sa.update(RouteRow).where(
                RouteRow.workload == workload, RouteRow.epoch == epoch).values(
                evidence_calls=RouteRow.evidence_calls + calls, evidence_agreed=RouteRow.evidence_agreed + agreed,
                evidence_llr=sa.case((total > cap, cap), else_=total)))
        return changed.rowcount == 1

    def events(self, workload: str | None = None, limit: int = 50, after_id: int | None = None) -> list[RouteEvent]:
        """The newest ``limit`` events, newest first; with ``after_id``, those after it, oldest first."""
        if after_id is None:
            query = sa.select(RouteEventRow).order_by(RouteEventRow.id.desc()).limit(limit)
        else:
            query = sa.select(RouteEventRow).where(RouteEventRow.id > after_id).order_by(RouteEventRow.id).limit(limit)
        if workload:
            query = query.where(RouteEventRow.workload == workload)
        with self.engine.connect() as conn:
            return [RouteEvent(r.workload, r.kind, r.from_mode, r.to_mode, r.reason, r.created_at, r.evidence, r.id)
                    for r in conn.execute(query)]


def _route(row) -> Route:
    return Route(row.workload, row.mode, row.canary_percent, row.small_url, row.small_model,
                 DecodingPolicy.from_structured_outputs(row.decoding_policy), Cascade.from_record(row.cascade),
                 bool(row.autopilot), Approval.from_record(row.approval), row.epoch)


def _state(row) -> RouteState:
    since = row.updated_at if row.updated_at.tzinfo else row.updated_at.replace(tzinfo=dt.timezone.utc)
    return RouteState(_route(row), Evidence(row.evidence_calls, row.evidence_agreed, row.evidence_llr), since)


@dataclass(frozen=True)
class RollbackPolicy:
    window_s: float = 60.0  # the sliding window the figures are computed over
    min_samples: int = 20  # no decision on fewer small-model outcomes than this
    max_error_rate: float = 0.05  # small-model calls that failed (the caller got the frontier's answer)
    max_p95_latency_ms: float = 2000.0
    max_disagreement_rate: float = 0.3  # shadow answers that differ from the frontier's (normalized)
    max_invalid_rate: float = 0.05  # answers outside the label set or not a JSON object
    # JSON answers: the mean share of an answer's values not found in the prompt (monitoring.hallucination)
    max_ungrounded_share: float = 0.2
    # Cascade routes: the share of calls the small model answered alone, below the evaluated coverage by more than this
    max_coverage_drop: float = 0.2


class RolloutMonitor:
    """A sliding window of one workload's small-model outcomes; says when the route must step back."""

    def __init__(self, policy: RollbackPolicy):
        self.policy = policy
        self._outcomes: collections.deque[tuple[float, bool, float, bool | None, bool, float | None]] = \
            collections.deque()
        self._covered: collections.deque[tuple[float, bool]] = collections.deque()  # cascade calls: answered alone?
        self._audits: collections.deque[tuple[float, bool]] = collections.deque()  # audited calls: agreed?

    def observe(self, ok: bool, latency_ms: float, agreed: bool | None = None, valid: bool = True,
                now: float | None = None, ungrounded: float | None = None) -> None:
        """One small-model call: answered at all (``ok``), how fast, like the frontier (shadow, audit), valid, and the
        share of its answer's values not in the prompt (JSON answers)."""
        self._outcomes.append((time.monotonic() if now is None else now, ok, latency_ms, agreed, valid, ungrounded))

    def observe_coverage(self, covered: bool, now: float | None = None) -> None:
        """One call a cascade route's small model answered validly: covered (at or above the threshold) or
        escalated."""
        self._covered.append((time.monotonic() if now is None else now, covered))

    def observe_audit(self, agreed: bool, now: float | None = None) -> None:
        """A covered call the frontier also answered: whether the two agreed (the call itself was observed)."""
        self._audits.append((time.monotonic() if now is None else now, agreed))

    def __len__(self) -> int:
        return len(self._outcomes)

    def reset(self) -> None:
        self._outcomes.clear()
        self._covered.clear()
        self._audits.clear()

    def breach(self, now: float | None = None, evaluated_coverage: float | None = None) -> str | None:
        """The first threshold the window crosses, as a reason; None while the small model behaves. A cascade route
        passes the coverage it was evaluated at."""
        now = time.monotonic() if now is None else now
        while self._outcomes and self._outcomes[0][0] < now - self.policy.window_s:
            self._outcomes.popleft()
        for window in (self._covered, self._audits):
            while window and window[0][0] < now - self.policy.window_s:
                window.popleft()
        if evaluated_coverage is not None and len(self._covered) >= self.policy.min_samples:
            coverage = sum(covered for _, covered in self._covered) / len(self._covered)
            if coverage < evaluated_coverage - self.policy.max_coverage_drop:
                return (f"cascade coverage {coverage:.1%} over {len(self._covered)} calls is more than "
                        f"{100 * self.policy.max_coverage_drop:.0f} points below the evaluated {evaluated_coverage:.1%}")
        outcomes = self._outcomes
        if len(outcomes) < self.policy.min_samples:
            return None
        policy, n = self.policy, len(outcomes)
        errors = sum(not ok for _, ok, _, _, _, _ in outcomes) / n
        if errors > policy.max_error_rate:
            return f"error rate {errors:.1%} over {n} calls > {policy.max_error_rate:.1%}"
        answered = [valid for _, ok, _, _, valid, _ in outcomes if ok]
        invalid = (len(answered) - sum(answered)) / len(answered) if answered else 0.0
        if invalid > policy.max_invalid_rate:
            return f"invalid-answer rate {invalid:.1%} over {len(answered)} answers > {policy.max_invalid_rate:.1%}"
        latencies = sorted(latency for _, ok, latency, _, _, _ in outcomes if ok)
        if latencies:
            p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
            if p95 > policy.max_p95_latency_ms:
                return f"p95 latency {p95:.0f} ms > {policy.max_p95_latency_ms:.0f} ms"
        shares = [share for *_, share in outcomes if share is not None]
        if len(shares) >= policy.min_samples:
            mean = sum(shares) / len(shares)
            if mean > policy.max_ungrounded_share:
                return (f"answer values not in the prompt {mean:.1%} over {len(shares)} answers > "
                        f"{policy.max_ungrounded_share:.1%}")
        compared = [agreed for _, _, _, agreed, _, _ in outcomes if agreed is not None] + [
            agreed for _, agreed in self._audits]
        if len(compared) >= policy.min_samples:
            disagreement = (len(compared) - sum(compared)) / len(compared)
            if disagreement > policy.max_disagreement_rate:
                return (f"shadow/audit disagreement {disagreement:.1%} over {len(compared)} calls > "
                        f"{policy.max_disagreement_rate:.1%}")
        return None
