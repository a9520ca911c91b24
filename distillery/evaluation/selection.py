"""Choosing the student: every candidate measured on the validation split only, and the cheapest that would pass.

For each trained candidate, on the validation rows (the test split is never read here):

- the headline metric and its 95% interval, and the gate mode it would reach there: **full** when the interval's low
  end is within the gate's margin of the frontier; else **cascade** when calibration (``cascade.choose``, the same
  rule ``eval_report`` applies) finds a threshold whose covered rows hold that bound; else **refused**;
- its price as served: the serving engine's requests/s at ``concurrency`` concurrent callers on this machine, at
  ``usd_per_hour`` for the machine (as ``eval_report`` prices the small model), and the blended cost per 1k requests
  (a cascade's escalated calls pay the frontier too).

``choose_student`` takes the lowest blended cost among those that would pass, ties broken on the headline; when none
would pass, the best headline (the gate will then refuse it, and say why). Every candidate's row says why it was or
was not chosen.

A **pair** of students (``pair_figures``) covers a call only when both answer the same and each is at or above its own
threshold: reported beside the candidates, so a team sees whether two cheap students together cover more at the same
agreement; the serving path answers with one student.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Callable

from distillery.evaluation.cascade import choose, interval95
from distillery.evaluation.costs import blended_usd_per_1k
from distillery.evaluation.gate import GatePolicy
from distillery.serving import Generation, Student
from distillery.tasks import Cascade, DecodingPolicy, confidence_measures

FULL, CASCADE, REFUSED = "full", "cascade", "refused"


@dataclass
class StudentFigures:
    """One candidate student's row of the comparison."""

    name: str
    kind: str
    base_model: str
    status: str  # "trained", or why it did not train ("failed: ...", "skipped: ...")
    validation_rows: int = 0
    headline: float | None = None
    headline_ci95: tuple[float, float] | None = None
    mode: str | None = None  # FULL, CASCADE or REFUSED on the validation split
    cascade: dict | None = None  # the calibrated cascade's record (threshold, measure, coverage on validation)
    covered_agreement: float | None = None
    requests_per_s: float | None = None
    small_usd_per_1k: float | None = None
    blended_usd_per_1k: float | None = None
    test: dict = field(default_factory=dict)  # the same figures on the test split, for the report (never chosen on)
    mlflow_run_id: str | None = None
    chosen: bool = False
    reason: str = ""

    @property
    def coverage(self) -> float:
        return (self.cascade or {}).get("coverage", 1.0) if self.mode == CASCADE else 1.0

    def as_dict(self) -> dict:
        return asdict(self)


# answers -> (the headline metric against the frontier's answers, its 95% interval, each row's agreement)
Score = Callable[[list[Generation]], tuple[float, tuple[float, float], list[float]]]


def measure_student(figures: StudentFigures, student: Student, conversations: list[list[dict]], score: Score, *,
                    decoding: DecodingPolicy, gate: GatePolicy, usd_per_hour: float, frontier_usd_per_1k: float | None,
                    concurrency: int, batch_size: int, max_new_tokens: int) -> tuple[StudentFigures, list[Generation]]:
    """``figures`` filled in from the student's answers to the validation ``conversations`` (``score`` scores them as
    evaluation does) and from serving them to ``concurrency`` callers; returns the answers too."""
    answers = student.answer(conversations, policy=decoding, max_new_tokens=max_new_tokens, batch_size=batch_size)
    figures.headline, figures.headline_ci95, agreement = score(answers)
    figures.validation_rows = len(answers)
    calibration = choose({measure: [g.confidence(measure) for g in answers] for measure in confidence_measures(decoding)},
                         agreement, max_gap=gate.max_gap_to_frontier, min_rows=gate.min_calibration_rows)
    figures.cascade = None
    if calibration.cascade:
        covered = [a for g, a in zip(answers, agreement) if g.confidence(calibration.cascade.measure)
                   >= calibration.cascade.threshold]
        figures.covered_agreement = statistics.fmean(covered) if covered else None
        # The coverage the cascade reaches on the validation rows it was chosen on (``cascade.check`` records the test
        # split's later, for the chosen student only): what its blended cost is priced at.
        figures.cascade = {**calibration.cascade.record(), "coverage": len(covered) / len(answers)}
    if figures.headline_ci95[0] >= 1 - gate.max_gap_to_frontier - 1e-12:
        figures.mode = FULL
    else:
        figures.mode = CASCADE if figures.cascade and figures.cascade["coverage"] else REFUSED
    served = student.serve(conversations, concurrency=concurrency, policy=decoding, max_new_tokens=max_new_tokens,
                           batch_size=batch_size)
    figures.requests_per_s = served.requests_per_s
    figures.small_usd_per_1k = usd_per_hour / 3.6 / served.requests_per_s if served.requests_per_s else None
    if figures.mode != REFUSED and figures.small_usd_per_1k is not None and frontier_usd_per_1k is not None:
        figures.blended_usd_per_1k = blended_usd_per_1k(figures.coverage, figures.small_usd_per_1k, frontier_usd_per_1k)
    return figures, answers


def choose_student(candidates: list[StudentFigures]) -> StudentFigures:
    """The chosen candidate (marked ``chosen``); every trained candidate's ``reason`` says why it was or was not."""
    trained = [c for c in candidates if c.status == "trained"]
    if not trained:
        raise ValueError("no candidate student trained: " + "; ".join(f"{c.name}: {c.status}" for c in candidates))
    passing = [c for c in trained if c.mode in (FULL, CASCADE)]
    if passing:
        def cost(c: StudentFigures) -> tuple[float, float]:
            return (c.blended_usd_per_1k if c.blended_usd_per_1k is not None else float("inf"), -(c.headline or 0.0))

        chosen = min(passing, key=cost)
        why = (f"the lowest blended cost among those whose gate mode would pass on the validation split "
               f"(${chosen.blended_usd_per_1k:.4f} per 1k, {chosen.mode})" if chosen.blended_usd_per_1k is not None
               else f"its gate mode would pass on the validation split ({chosen.mode})")
    else:
        chosen = max(trained, key=lambda c: c.headline or 0.0)
        why = "no candidate's gate mode would pass on the validation split: the best headline, for the gate to judge"
    for candidate in trained:
        candidate.chosen = candidate is chosen
        if candidate is chosen:
            candidate.reason = f"chosen: {why}"
        elif candidate.mode == REFUSED:
            candidate.reason = "its gate mode would not pass on the validation split"
        else:
            candidate.reason = (f"costs more (${candidate.blended_usd_per_1k:.4f} per 1k, {candidate.mode})"
                                if candidate.blended_usd_per_1k is not None else "not the cheapest")
    return chosen


def pair_figures(first: StudentFigures, second: StudentFigures, first_answers: list[Generation],
                 second_answers: list[Generation], agreement: list[float], gate: GatePolicy,
                 frontier_usd_per_1k: float | None) -> dict | None:
    """Two students as one: a call is covered when both answer the same, each at or above its own threshold (the
    threshold its own calibration chose; without one, every answer of it counts as sure). ``agreement`` is the first
    student's per row (equal to the second's where they agree). None unless both trained."""
    if first.status != "trained" or second.status != "trained":
        return None

    def sure(figures: StudentFigures, answer: Generation) -> bool:
        cascade = Cascade.from_record(figures.cascade)
        return cascade is None or answer.confidence(cascade.measure) >= cascade.threshold

    covered = [a for g, h, a in zip(first_answers, second_answers, agreement)
               if g.text == h.text and sure(first, g) and sure(second, h)]
    coverage = len(covered) / len(agreement) if agreement else 0.0
    low = interval95(covered)[0] if covered else 0.0
    small = (first.small_usd_per_1k or 0.0) + (second.small_usd_per_1k or 0.0)
    return {"name": f"{first.name}+{second.name}", "coverage": round(coverage, 4),
            "covered_agreement": round(statistics.fmean(covered), 4) if covered else None,
            "covered_agreement_low": round(low, 4), "holds_the_margin": low >= 1 - gate.max_gap_to_frontier,
            "small_usd_per_1k": round(small, 6),
            "blended_usd_per_1k": round(blended_usd_per_1k(coverage, small, frontier_usd_per_1k), 6)
            if frontier_usd_per_1k is not None else None}
