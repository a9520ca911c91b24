"""The rollback window: a sliding window of one workload's small-model outcomes at the gateway, and the thresholds
that step its route back (``distillery.routing.step_back``) when the small model misbehaves."""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class RollbackPolicy:
    window_s: float = 60.0  # the sliding window the figures are computed over
    min_samples: int = 20  # no decision on fewer small-model outcomes than this
    max_error_rate: float = 0.05  # small-model calls that failed (the caller got the frontier's answer)
    max_p95_latency_ms: float = 2000.0
    max_disagreement_rate: float = 0.3  # shadow answers that differ from the frontier's (normalized)
    max_invalid_rate: float = 0.05  # answers outside the label set or not a JSON object
    # JSON answers: the mean share of an answer's values not found in the prompt (monitoring.hallucination)
    max_unsupported_value_share: float = 0.2
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
                now: float | None = None, unsupported: float | None = None) -> None:
        """One small-model call: answered at all (``ok``), how fast, like the frontier (shadow, audit), valid, and the
        share of its answer's values not in the prompt (JSON answers)."""
        self._outcomes.append((time.monotonic() if now is None else now, ok, latency_ms, agreed, valid, unsupported))

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
            if mean > policy.max_unsupported_value_share:
                return (f"answer values not in the prompt {mean:.1%} over {len(shares)} answers > "
                        f"{policy.max_unsupported_value_share:.1%}")
        compared = [agreed for _, _, _, agreed, _, _ in outcomes if agreed is not None] + [
            agreed for _, agreed in self._audits]
        if len(compared) >= policy.min_samples:
            disagreement = (len(compared) - sum(compared)) / len(compared)
            if disagreement > policy.max_disagreement_rate:
                return (f"shadow/audit disagreement {disagreement:.1%} over {len(compared)} calls > "
                        f"{policy.max_disagreement_rate:.1%}")
        return None
