"""The rollout autopilot: a route walks shadow -> canary 10% -> canary 50% -> small by itself while live agreement
with the frontier says the small model holds what evaluation measured, and steps back when it says it does not.

**The test.** On each stage, Wald's sequential probability ratio test between two hypotheses about the small model's
agreement p with the frontier on the stage's compared calls (shadow copies, and audits of calls it answered):

- *sound*: p = p_eval, what evaluation measured on the held-out split (a cascade's: on the rows it covered);
- *worse*: p = p_eval - margin (default 2 points).

Its statistic is the log-likelihood ratio of sound against worse: an agreeing call adds log(p_eval / (p_eval - margin)),
a disagreeing one log((1 - p_eval) / (1 - p_eval + margin)). Both bounds hold however often it is looked at (Ville's
inequality: under each hypothesis the likelihood ratio of the other is a nonnegative martingale, which ever reaches
1/x with chance at most x), so the gateway may judge it every second:

- at ``log(1/delta)`` the test accepts *sound*: a model worse by the margin passes a stage with chance at most delta;
- at ``-log((S + 1)/delta)`` for S stages it accepts *worse*: delta is shared by the S stages' tests and the last
  stage's watch, which never ends, so a model as good as evaluated is stepped back with chance at most delta/(S + 1)
  by each.

While the test has accepted sound but the route cannot advance (the stage's minimum dwell has not passed, a rollback
threshold is crossed, or it is the last stage), the ratio is held at the step-back bound's size: a drop that comes a
month later is seen as soon as one that comes at once, within about twice that bound over the drop's
information per call. ``benchmarks/autopilot.py`` measures all of it against planted agreement rates (docs/benchmarks.md
has the figures; with the defaults, for p_eval 0.95: about 2,400 compared calls from shadow to small, about 1,000 to
step back a model 2 points worse, 3.6% of sound models stepped back within 10,000 calls).

**Who runs it.** The gateway (``gateway.watch``) counts each compared call of a route whose autopilot is on; its
route table (``routing.table``) adds those counts to the route's evidence in the database every ``route_refresh_s``
(one atomic update, so every gateway's calls pool into one test, and evidence gathered at an earlier stage is dropped:
the route's ``epoch`` moved on), and judges the route with ``AutopilotPolicy.judge``. A decision is a route change
that records its evidence as a route event; the route only changes when its epoch is still the one judged, so two
gateways never decide twice.

The route never goes past what the gate approved (``Approval``): its last stage is ``small`` in the gate's mode, a
cascade at the threshold it approved when the gate chose one. A person's ``distillery route set`` pins the route:
the autopilot is off until ``distillery route auto WORKLOAD on``.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, replace

from distillery.routing.routes import CANARY, FRONTIER, SHADOW, SMALL, Approval, Evidence, Route

ADVANCE, STEP_BACK = "advance", "rollback"  # route event kinds of the autopilot's decisions
DEFAULT_STAGES = ("shadow", "canary 10", "canary 50", "small")
# The least time on each stage but the last before it may advance: shadow a day (a whole cycle of the traffic), each
# canary an hour.
DEFAULT_MIN_DWELL_S = (86_400.0, 3_600.0, 3_600.0)
MAX_DWELL_S = 30 * 86_400.0
# An evaluation without a single disagreement is read as this much agreement: under p_eval = 1 one disagreeing call
# would be certain proof of "worse".
MAX_SOUND_AGREEMENT = 0.999


def _position(mode: str, percent: float) -> float:
    """Where a route stands on the way from the frontier to the small model: frontier, shadow, canary by its share."""
    return {FRONTIER: -1.0, SHADOW: 0.0, SMALL: 101.0}.get(mode, percent)


@dataclass(frozen=True)
class Stage:
    mode: str
    percent: float = 0.0

    @classmethod
    def parse(cls, text: str) -> "Stage":
        """``shadow``, ``canary N`` (N between 0 and 100, exclusive) or ``small``."""
        words = text.replace("%", " ").split()
        if words in (["shadow"], ["small"]):
            return cls(words[0])
        if len(words) == 2 and words[0] == CANARY:
            try:
                percent = float(words[1])
            except ValueError:
                percent = -1.0
            if 0 < percent < 100:
                return cls(CANARY, percent)
        raise ValueError(f"autopilot stage {text!r}: use shadow, canary N (0 < N < 100) or small")

    @property
    def label(self) -> str:
        return f"canary {self.percent:g}%" if self.mode == CANARY else self.mode


@dataclass(frozen=True)
class Decision:
    kind: str  # ADVANCE or STEP_BACK
    route: Route  # the route after it
    reason: str
    evidence: dict  # AutopilotPolicy.evidence_record: what it was decided on


@dataclass(frozen=True)
class AutopilotPolicy:
    """The gateway's ``[autopilot]`` table: the stages, their minimum dwell, the test's delta and margin."""

    stages: tuple[str, ...] = DEFAULT_STAGES
    min_dwell_s: tuple[float, ...] = DEFAULT_MIN_DWELL_S  # one per stage but the last
    delta: float = 0.05
    margin: float = 0.02  # "worse": this much less agreement than evaluated (0.02: 2 points)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        object.__setattr__(self, "min_dwell_s", tuple(float(d) for d in self.min_dwell_s))
        walk = [Stage.parse(stage) for stage in self.stages]
        if len(walk) < 2 or walk[0].mode != SHADOW or walk[-1].mode != SMALL:
            raise ValueError(f"autopilot stages {list(self.stages)}: start at shadow and end at small")
        positions = [_position(stage.mode, stage.percent) for stage in walk]
        if positions != sorted(set(positions)):
            raise ValueError(f"autopilot stages {list(self.stages)}: each must be further than the one before")
        if len(self.min_dwell_s) != len(walk) - 1:
            raise ValueError(f"autopilot min_dwell_s: one per stage but the last ({len(walk) - 1}), "
                             f"got {len(self.min_dwell_s)}")
        for dwell in self.min_dwell_s:
            if not 0 <= dwell <= MAX_DWELL_S:
                raise ValueError(f"autopilot min_dwell_s {dwell:g}: between 0 and {MAX_DWELL_S:g} seconds (30 days)")
        if not 0.001 <= self.delta <= 0.2:
            raise ValueError(f"autopilot delta {self.delta!r}: between 0.001 and 0.2")
        if not 0.001 <= self.margin <= 0.5:
            raise ValueError(f"autopilot margin {self.margin!r}: between 0.001 and 0.5 (0.02 is 2 points)")
        object.__setattr__(self, "_walk", tuple(walk))

    @property
    def walk(self) -> tuple[Stage, ...]:
        return self._walk  # type: ignore[attr-defined]

    @property
    def advance_bound(self) -> float:
        return math.log(1 / self.delta)

    @property
    def step_back_bound(self) -> float:
        return math.log((len(self.walk) + 1) / self.delta)

    def hypotheses(self, approval: Approval) -> tuple[float, float]:
        """The agreement of *sound* and of *worse*; refused when evaluation measured less than the margin."""
        sound = min(approval.agreement, MAX_SOUND_AGREEMENT)
        if sound - self.margin <= 0:
            raise ValueError(f"evaluated agreement {approval.agreement:.1%} is not above the autopilot's margin "
                             f"{self.margin:.1%}: there is no worse model to test against")
        return sound, sound - self.margin

    def llr_of(self, approval: Approval, calls: int, agreed: int) -> float:
        """What ``calls`` compared calls, ``agreed`` of them agreeing, add to the log-likelihood ratio."""
        sound, worse = self.hypotheses(approval)
        return agreed * math.log(sound / worse) + (calls - agreed) * math.log((1 - sound) / (1 - worse))

    def add(self, evidence: Evidence, approval: Approval, calls: int, agreed: int) -> Evidence:
        """The evidence with more compared calls (what the database's update does, for one gateway's counts)."""
        llr = min(self.step_back_bound, evidence.llr + self.llr_of(approval, calls, agreed))
        return Evidence(evidence.calls + calls, evidence.agreed + agreed, llr)

    def stage_index(self, route: Route) -> int:
        """The furthest stage at or before the route's (-1 on the frontier): a route a person set between two stages
        goes on from there."""
        here = _position(route.mode, route.canary_percent)
        return max((i for i, stage in enumerate(self.walk) if _position(stage.mode, stage.percent) <= here),
                   default=-1)

    def next_route(self, route: Route) -> Route | None:
        """The next stage; None on the last one."""
        index = self.stage_index(route)
        return _moved(route, self.walk[index + 1]) if index + 1 < len(self.walk) else None

    def switched_on(self, route: Route | None, workload: str) -> Route:
        """The route with its autopilot on: a route on the frontier starts at the first stage, one a person took past
        the gate's mode gets the gate's cascade back. Raises ValueError, with the reason, when nothing could be tested:
        no deployed model, no record of what the gate approved, or answers that cannot be compared with the
        frontier's (free text: the gateway has no judge)."""
        if route is None or not (route.small_url and route.small_model):
            raise ValueError(f"workload {workload!r} has no deployed adapter: materialize deployed_endpoint first")
        if route.approval is None:
            raise ValueError(f"workload {workload!r}: its deployment recorded no gate approval (deployed before the "
                             "autopilot existed): materialize deployed_endpoint again")
        if route.policy.kind == "free":
            raise ValueError(f"workload {workload!r} answers free text: the gateway has no judge to compare its "
                             "answers with the frontier's, so there is no evidence to walk on; move it with route set")
        self.hypotheses(route.approval)
        switched = replace(route, autopilot=True)
        if route.mode == FRONTIER:
            return _moved(switched, self.walk[0])
        if route.approval.mode == "cascade" and route.cascade != route.approval.cascade:
            return replace(switched, cascade=route.approval.cascade)
        return switched

    def min_dwell(self, route: Route) -> float:
        index = self.stage_index(route)
        return self.min_dwell_s[index] if 0 <= index < len(self.min_dwell_s) else 0.0

    def evidence_record(self, route: Route, evidence: Evidence, bound: float | None = None) -> dict:
        """What a decision was made on, as its route event keeps it."""
        sound, worse = self.hypotheses(route.approval)
        return {"calls": evidence.calls, "agreed": evidence.agreed,
                "agreement": round(evidence.agreement, 6) if evidence.calls else None,
                "sound_agreement": sound, "worse_agreement": round(worse, 6), "llr": round(evidence.llr, 4),
                "bound": round(bound, 4) if bound is not None else None, "delta": self.delta,
                "model_version": route.approval.model_version}

    def judge(self, route: Route, evidence: Evidence, stage_since: dt.datetime, now: dt.datetime,
              breach: str | None = None) -> Decision | None:
        """The decision the evidence calls for now, or None. ``breach``: a rollback threshold the gateway's window
        crosses (it steps the route back itself; the autopilot only waits)."""
        if not route.autopilot or route.approval is None or route.mode == FRONTIER:
            return None
        agreement = f"agreement {evidence.agreement:.1%} over {evidence.calls} compared calls" if evidence.calls \
            else "no compared calls"
        sound, worse = self.hypotheses(route.approval)
        if evidence.llr <= -self.step_back_bound:
            back = step_back(route, self)
            stop = "; the autopilot stops at the frontier" if back.mode == FRONTIER else ""
            return Decision(STEP_BACK, back, (
                f"autopilot: {agreement} accepts worse (agreement {worse:.1%} or less against the evaluated "
                f"{sound:.1%}, delta {self.delta:g}){stop}"),
                self.evidence_record(route, evidence, -self.step_back_bound))
        following = self.next_route(route)
        if evidence.llr < self.advance_bound or following is None or breach:
            return None
        if (now - stage_since).total_seconds() < self.min_dwell(route):
            return None
        return Decision(ADVANCE, following, (
            f"autopilot: {agreement} accepts sound (agreement {sound:.1%} as evaluated, not {worse:.1%}; delta "
            f"{self.delta:g}) after {_duration((now - stage_since).total_seconds())} on {route.label}"),
            self.evidence_record(route, evidence, self.advance_bound))

    def outlook(self, route: Route, evidence: Evidence, stage_since: dt.datetime, now: dt.datetime) -> str:
        """What would trigger the route's next decision, in a sentence (``distillery route show``)."""
        if not route.autopilot:
            return "autopilot off: the route stays where it is until a person moves it or turns the autopilot on"
        if route.approval is None:
            return "autopilot waits for a deployment to record what the gate approved"
        if route.mode == FRONTIER:
            return "autopilot waits: nothing is compared on the frontier"
        back = step_back(route, self)
        following = self.next_route(route)
        lines = [f"steps back to {back.label} when the log-likelihood ratio reaches "
                 f"{-self.step_back_bound:+.2f} (now {evidence.llr:+.2f})"]
        if following is None:
            lines.append(f"last stage ({route.label}, the gate's {route.approval.mode} mode): it keeps watching")
        else:
            wait = self.min_dwell(route) - (now - stage_since).total_seconds()
            dwell = f", in {_duration(wait)} at the earliest (minimum dwell)" if wait > 0 else ""
            lines.append(f"advances to {following.label} when it reaches {self.advance_bound:+.2f}{dwell}")
        return "; ".join(lines)


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{max(seconds, 0):.0f} s"


def _moved(route: Route, stage: Stage) -> Route:
    """An autopilot's ``route`` moved to ``stage``, in the mode the gate approved (its cascade when it chose one)."""
    approval = route.approval
    cascade = approval.cascade if approval and approval.mode == "cascade" else route.cascade
    return replace(route, mode=stage.mode, canary_percent=stage.percent, cascade=cascade)


def step_back(route: Route, policy: AutopilotPolicy) -> Route:
    """One step towards the frontier: the stage of the rollout (``policy.stages``, the gateway's ``[autopilot]``
    table) before the route's. The one rule of every step back: the gateway's rollback window, the autopilot's test,
    live monitoring and ``distillery route back``.

    Below the first stage is the frontier, where the autopilot stops (nothing is compared there). With the default
    stages: small -> canary 50% -> canary 10% -> shadow -> frontier, and a route a person set between two stages
    (canary 25%) goes to the stage below it (canary 10%). An autopilot route lands in the mode the gate approved (its
    cascade); a route a person set keeps its own cascade, and its autopilot stays off.
    """
    here = _position(route.mode, route.canary_percent)
    before = [stage for stage in policy.walk if _position(stage.mode, stage.percent) < here]
    if not before:
        return replace(route, mode=FRONTIER, canary_percent=0.0, autopilot=False)
    if route.autopilot:
        return _moved(route, before[-1])
    return replace(route, mode=before[-1].mode, canary_percent=before[-1].percent)
