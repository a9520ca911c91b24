"""Per-workload routes between the frontier and the small model, and their store.

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
parse), the caller gets the frontier's answer instead: a cut-over never fails a request. The rollback window
(``distillery.routing.rollback``) and live monitoring step a route back along the rollout's stages
(``distillery.routing.step_back``); a route whose autopilot is on (``distillery.routing.autopilot``) also advances
by itself. Every change is stored with its reason as a route event.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from dataclasses import dataclass, field, replace

import sqlalchemy as sa

from distillery.store import RouteEventRow, RouteRow
from distillery.wire import CHAT_API, CLASSIFY_API, SMALL_MODEL_APIS
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
    autopilot: bool = False  # advances and steps back by itself (distillery.routing.autopilot)
    approval: Approval | None = None  # what the gate approved for the deployed model
    epoch: int = field(default=0, compare=False)  # the route's changes so far, as stored (evidence is per epoch)
    small_api: str = CHAT_API  # how the small model is asked (wire.SMALL_MODEL_APIS): its server's API

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown route mode {self.mode!r}: use one of {', '.join(MODES)}")
        if self.small_api not in SMALL_MODEL_APIS:
            raise ValueError(f"unknown small-model API {self.small_api!r}: use one of {', '.join(SMALL_MODEL_APIS)}")
        if self.small_api == CLASSIFY_API and not self.policy.labels:
            raise ValueError(f"route for {self.workload!r}: the classify API answers a label set, and its policy has "
                             "none")
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
    evidence: dict | None = None  # an autopilot decision's (distillery.routing.AutopilotPolicy.evidence_record)
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
                  "small_model": route.small_model, "small_api": route.small_api,
                  "decoding_policy": route.policy.record(),
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
                 bool(row.autopilot), Approval.from_record(row.approval), row.epoch, row.small_api)


def _state(row) -> RouteState:
    since = row.updated_at if row.updated_at.tzinfo else row.updated_at.replace(tzinfo=dt.timezone.utc)
    return RouteState(_route(row), Evidence(row.evidence_calls, row.evidence_agreed, row.evidence_llr), since)
