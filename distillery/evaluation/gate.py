"""The cut-over gate: may the fine-tuned model (the challenger) take the workload's traffic, and in which mode?

It decides on what the held-out split supports, never on a point estimate:

0. Evidence: a test split under ``min_test_rows`` gets the verdict "not enough evidence", never a promotion.
1. **Full**: the lower bound of the headline metric's 95% interval (bootstrap over the test rows) is within
   ``max_gap_to_frontier`` of the frontier. The references are the frontier's own answers, so the frontier scores 1.0
   on them: the default gap of 5 points asks for a lower bound of 0.95.
2. **Cascade at threshold t**, when full fails: the threshold chosen on the validation split
   (``distillery.evaluation.cascade``) covers a share of the test rows whose agreement with the frontier has a lower
   95% bound within the same margin. The small model answers the covered calls, the frontier the rest.
3. Against the champion, on the same rows (a paired bootstrap of the difference): the challenger replaces it only
   when the difference's 95% interval lies above 0, so two models that differ by noise are not swapped.
   ``require_gain_over_champion=False`` asks only that it is not worse beyond noise (the interval's top above 0).

Every rule that fails is named in the decision, with its numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from distillery.evaluation.cascade import Calibration
from distillery.settings import setting

FRONTIER_SCORE = 1.0  # the frontier's answers are the references
DEFAULT_MIN_TEST_ROWS = 200
FULL, CASCADE, REFUSED, NOT_ENOUGH_EVIDENCE = "full", "cascade", "refused", "not enough evidence"


@dataclass(frozen=True)
class GatePolicy:
    """The gate's rules (the module's docstring says what each decides)."""

    max_gap_to_frontier: float = setting(0.05, "Promote only if the headline metric's lower bound is at most this "
                                         "far below the frontier's, which scores 1.0 on its own answers (0.05: 5 "
                                         "points).")
    min_test_rows: int = setting(DEFAULT_MIN_TEST_ROWS, "Fewer held-out rows get the verdict 'not enough evidence', "
                                 "never a promotion.")
    min_calibration_rows: int = setting(100, "Fewer validation rows: no cascade threshold is chosen (the mode can "
                                        "only be full).")
    require_gain_over_champion: bool = setting(True, "Replace the champion only when the challenger is better beyond "
                                               "noise (paired bootstrap on the same rows); false: when it is not "
                                               "worse beyond noise.")

    def __post_init__(self) -> None:
        if not 0 <= self.max_gap_to_frontier <= 1:
            raise ValueError(f"max_gap_to_frontier must be between 0 and 1, got {self.max_gap_to_frontier}")
        if self.min_test_rows < 1 or self.min_calibration_rows < 1:
            raise ValueError("min_test_rows and min_calibration_rows must be at least 1")


@dataclass(frozen=True)
class ChampionComparison:
    """The challenger against the champion on the same held-out rows."""

    model_version: str
    score: float  # the champion's headline metric
    difference: float  # challenger minus champion
    difference_ci95: tuple[float, float]  # paired bootstrap over the rows


@dataclass
class GateDecision:
    promote: bool
    metric: str
    mode: str  # FULL, CASCADE, REFUSED or NOT_ENOUGH_EVIDENCE
    reasons: list[str] = field(default_factory=list)  # one line per rule, failed ones first
    cascade: dict | None = None  # CASCADE: the threshold, its measure and the test coverage

    @property
    def verdict(self) -> str:
        if self.mode == NOT_ENOUGH_EVIDENCE:
            return "NOT ENOUGH EVIDENCE"
        if not self.promote:
            return "REFUSE"
        if self.mode == CASCADE:
            return (f"PROMOTE (cascade at threshold {self.cascade['threshold']:.4g}, "
                    f"{self.cascade['coverage']:.1%} coverage)")
        return "PROMOTE (full)"

    @property
    def summary(self) -> str:
        return f"{self.verdict}: " + "; ".join(self.reasons)

    def as_dict(self) -> dict:
        return {**asdict(self), "verdict": self.verdict, "summary": self.summary}


def decide(metric: str, rows: int, ci95: tuple[float, float], calibration: Calibration | None,
           champion: ChampionComparison | None, policy: GatePolicy) -> GateDecision:
    """Apply the rules to the challenger's headline interval ``ci95`` on ``rows`` test rows."""
    if rows < policy.min_test_rows:
        return GateDecision(False, metric, NOT_ENOUGH_EVIDENCE, [
            f"{rows} test rows are under the minimum of {policy.min_test_rows}: capture more traffic (or lower "
            "min_test_rows, knowing the interval is wide)"])
    failed, passed = [], []
    if policy.min_test_rows < DEFAULT_MIN_TEST_ROWS:
        passed.append(f"evidence: {rows} test rows, at or above a minimum lowered to {policy.min_test_rows} (default "
                      f"{DEFAULT_MIN_TEST_ROWS}): the intervals are wide")
    required = FRONTIER_SCORE - policy.max_gap_to_frontier
    low = ci95[0]
    full = low >= required - 1e-9  # a bound exactly at the margin passes
    (passed if full else failed).append(
        f"full: {metric}'s lower 95% bound {low:.3f} is {100 * (FRONTIER_SCORE - low):.1f} points below the frontier "
        f"(allowed {100 * policy.max_gap_to_frontier:.1f})")
    cascade = None
    if not full:
        if calibration is None or calibration.cascade is None or calibration.test is None:
            failed.append(f"cascade: {calibration.note if calibration else 'not calibrated'}")
        else:
            chosen, test = calibration.cascade, calibration.test
            covered_low = test.covered_agreement_ci95[0]
            line = (f"cascade: threshold {chosen.threshold:.4g} ({chosen.measure.replace('_', ' ')}) covers "
                    f"{test.coverage:.1%} of the test rows at {test.covered_agreement:.1%} agreement, lower 95% bound "
                    f"{covered_low:.1%} (required {required:.1%})")
            if test.covered_rows and covered_low >= required - 1e-9:
                passed.append(line)
                cascade = chosen.record()  # its coverage: the test split's
            else:
                failed.append(line)
    champion_holds = True
    if champion is None:
        passed.append("no champion yet")
    else:
        d_low, d_high = champion.difference_ci95
        line = (f"champion v{champion.model_version} scores {champion.score:.3f}; the challenger differs by "
                f"{100 * champion.difference:+.1f} points, paired 95% interval {100 * d_low:+.1f} to "
                f"{100 * d_high:+.1f}")
        champion_holds = d_low > 0 if policy.require_gain_over_champion else d_high >= 0
        if d_low > 0:
            line += ": better beyond noise"
        elif d_high < 0:
            line += ": worse beyond noise, the champion stays"
        else:
            line += (": not worse beyond noise" if champion_holds
                     else ": no evidence that it is better, the champion stays")
        (passed if champion_holds else failed).append(line)
    promote = (full or cascade is not None) and champion_holds
    mode = (FULL if full else CASCADE) if promote else REFUSED
    return GateDecision(promote, metric, mode, failed + passed, cascade if mode == CASCADE else None)
