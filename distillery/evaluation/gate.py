"""The cut-over gate: may the fine-tuned model (the challenger) take the workload's traffic?

Two rules, both on the workload's headline metric (accuracy for classification, field F1 for
extraction, embedding similarity for free text), measured against the frontier's answers on
the held-out split:

1. Within ``max_gap_to_frontier`` of the frontier. The references are the frontier's own
   answers, so the frontier scores 1.0 on them: the default gap of 5 points asks for 0.95.
2. Not worse than the current champion beyond the challenger's 95% bootstrap interval: when
   the champion's score (on the same rows) is above the challenger's whole interval, the
   drop is more than sampling noise and the challenger is refused. With no champion yet,
   this rule passes.

Every rule that fails is named in the decision, with its numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

FRONTIER_SCORE = 1.0  # the frontier's answers are the references


@dataclass(frozen=True)
class GatePolicy:
    max_gap_to_frontier: float = 0.05  # in metric units: 0.05 is 5 points

    def __post_init__(self) -> None:
        if not 0 <= self.max_gap_to_frontier <= 1:
            raise ValueError(f"max_gap_to_frontier must be between 0 and 1, got {self.max_gap_to_frontier}")


@dataclass(frozen=True)
class ChampionScore:
    model_version: str
    score: float  # headline metric on the same held-out rows as the challenger


@dataclass
class GateDecision:
    promote: bool
    metric: str
    reasons: list[str] = field(default_factory=list)  # one line per rule, failed ones first

    @property
    def summary(self) -> str:
        return ("PROMOTE: " if self.promote else "REFUSE: ") + "; ".join(self.reasons)

    def as_dict(self) -> dict:
        return {**asdict(self), "summary": self.summary}


def decide(metric: str, score: float, ci95: tuple[float, float], champion: ChampionScore | None,
           policy: GatePolicy) -> GateDecision:
    """Apply both rules to the challenger's ``score`` and its 95% interval ``ci95``."""
    failed, passed = [], []
    gap = FRONTIER_SCORE - score
    allowed = policy.max_gap_to_frontier
    # A tolerance for float noise: a score exactly at the margin passes.
    line = f"{metric} {score:.3f} is {100 * gap:.1f} points below the frontier (allowed {100 * allowed:.1f})"
    (passed if gap <= allowed + 1e-9 else failed).append(line)
    if champion is None:
        passed.append("no champion yet")
    else:
        low, high = ci95
        line = (f"champion v{champion.model_version} scores {champion.score:.3f}, challenger's 95% interval "
                f"{low:.3f}-{high:.3f}")
        if champion.score > high:
            failed.append(line + ": worse than the champion beyond the interval")
        else:
            passed.append(line + ": not worse beyond the interval")
    return GateDecision(promote=not failed, metric=metric, reasons=failed + passed)
