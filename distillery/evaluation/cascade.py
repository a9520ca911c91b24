"""The confidence cascade's calibration: which share of the traffic the small model may answer on its own.

Every small-model answer has a confidence (``distillery.tasks.confidence``: the label's probability among the
labels, the JSON answer's sequence or lowest-token probability, free text's mean token probability), computed from
the same token log-probabilities in evaluation and in serving. Sorted by confidence, the rows above a threshold are
the ones the cascade *covers* (the small model answers them); the rest are *escalated* to the frontier.

On the validation split, ``choose`` takes, for each measure the policy allows, the lowest threshold whose covered
rows' agreement with the frontier has a lower 95% bound (Wilson's, for agreement as a yes/no per row) within the
gate's margin, and keeps the measure that covers the most. ``check`` then measures that operating point on the test
split, which the choice never saw: coverage, agreement on the covered rows and its interval, and the blended
agreement (escalated rows get the frontier's own answer, which agrees with itself).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field, replace
from typing import Sequence

from distillery.tasks import Cascade

Z95 = 1.959964  # two-sided 95%


def interval95(values: Sequence[float]) -> tuple[float, float]:
    """The 95% interval of the mean of per-row values in [0, 1]: Wilson's score interval when every value is 0 or 1
    (it stays inside [0, 1] and is honest at 100% agreement), else the normal approximation."""
    return _interval95(len(values), sum(values), sum(v * v for v in values), all(v in (0.0, 1.0) for v in values))


def _interval95(n: int, total: float, squares: float, binary: bool) -> tuple[float, float]:
    """``interval95`` from the count, sum and sum of squares, so a curve can grow them row by row."""
    if n == 0:
        return (0.0, 0.0)
    mean = total / n
    if binary:
        centre = (mean + Z95 ** 2 / (2 * n)) / (1 + Z95 ** 2 / n)
        half = Z95 * math.sqrt(mean * (1 - mean) / n + Z95 ** 2 / (4 * n * n)) / (1 + Z95 ** 2 / n)
        return (max(0.0, centre - half), min(1.0, centre + half))
    stdev = math.sqrt(max(0.0, (squares - n * mean * mean) / (n - 1))) if n > 1 else 0.0
    half = Z95 * (stdev / math.sqrt(n) if n > 1 else 1.0)
    return (max(0.0, mean - half), min(1.0, mean + half))


@dataclass(frozen=True)
class CurvePoint:
    threshold: float  # answers with a confidence at least this are covered
    coverage: float
    agreement: float  # on the covered rows
    agreement_low: float  # its lower 95% bound


def coverage_curve(confidences: Sequence[float], agreement: Sequence[float]) -> list[CurvePoint]:
    """One point per distinct confidence, from the most confident row down to full coverage (running sums: one pass
    over the rows, not one per point)."""
    order = sorted(range(len(confidences)), key=lambda i: -confidences[i])
    binary = all(a in (0.0, 1.0) for a in agreement)
    points, total, squares = [], 0.0, 0.0
    for k, i in enumerate(order):
        total += agreement[i]
        squares += agreement[i] * agreement[i]
        if k + 1 < len(order) and confidences[order[k + 1]] == confidences[i]:
            continue  # a threshold covers every row of its confidence or none
        n = k + 1
        points.append(CurvePoint(confidences[i], n / len(order), total / n,
                                 _interval95(n, total, squares, binary)[0]))
    return points


@dataclass
class CascadeCheck:
    """The chosen operating point on the test split."""

    coverage: float
    covered_rows: int
    covered_agreement: float
    covered_agreement_ci95: tuple[float, float]
    blended_agreement: float  # covered rows answered by the small model, escalated ones by the frontier


@dataclass
class Calibration:
    validation_rows: int
    required_low: float  # the lower bound the covered agreement must reach: 1 - the gate's margin
    cascade: Cascade | None  # None: no threshold reaches the bound, or too few rows (``note`` says which)
    note: str
    validation_curve: list[CurvePoint] = field(default_factory=list)  # under the chosen (or first) measure
    test_curve: list[CurvePoint] = field(default_factory=list)
    test: CascadeCheck | None = None

    def as_dict(self) -> dict:
        return {**asdict(self), "cascade": self.cascade.record() if self.cascade else None}


def too_few_rows(rows: int, *, max_gap: float, min_rows: int) -> Calibration:
    """The calibration of a validation split too small to choose a threshold from."""
    return Calibration(rows, 1 - max_gap, None, f"validation split of {rows} rows is under the {min_rows} a threshold "
                       "is chosen from: no cascade, the mode is full")


def choose(confidences: dict[str, Sequence[float]], agreement: Sequence[float], *, max_gap: float,
           min_rows: int) -> Calibration:
    """The cascade covering the most validation rows whose covered agreement's lower bound is at least
    ``1 - max_gap``; ``confidences`` holds each candidate measure's per-row confidences, best-preferred first."""
    if len(agreement) < min_rows:
        return too_few_rows(len(agreement), max_gap=max_gap, min_rows=min_rows)
    required = 1 - max_gap
    curves = {measure: coverage_curve(values, agreement) for measure, values in confidences.items()}
    best: tuple[str, CurvePoint] | None = None
    for measure, curve in curves.items():
        # the lowest threshold that still holds the bound (points run from high to low confidence)
        holding = [point for point in curve if point.agreement_low >= required - 1e-12]
        if holding and (best is None or holding[-1].coverage > best[1].coverage):
            best = measure, holding[-1]
    if best is None:
        return Calibration(len(agreement), required, None,
                           f"no threshold keeps the covered agreement's lower 95% bound at {required:.1%} or above on "
                           f"{len(agreement)} validation rows: no cascade, the mode is full",
                           next(iter(curves.values()), []))
    measure, point = best
    return Calibration(len(agreement), required, Cascade(point.threshold, measure),
                       f"threshold {point.threshold:.4g} on {measure.replace('_', ' ')} covers {point.coverage:.1%} of "
                       f"{len(agreement)} validation rows at {point.agreement:.1%} agreement (lower 95% bound "
                       f"{point.agreement_low:.1%} >= {required:.1%})", curves[measure])


def check(calibration: Calibration, confidences: Sequence[float], agreement: Sequence[float]) -> Calibration:
    """Measure the chosen cascade on the test split (``confidences`` under its measure) and record the coverage it
    reaches there on the cascade (what the live coverage is compared with); returns ``calibration``."""
    calibration.test_curve = coverage_curve(confidences, agreement)
    if calibration.cascade is None or not agreement:
        return calibration
    covered = [a for c, a in zip(confidences, agreement) if c >= calibration.cascade.threshold]
    escalated = len(agreement) - len(covered)
    calibration.test = CascadeCheck(
        coverage=len(covered) / len(agreement), covered_rows=len(covered),
        covered_agreement=statistics.fmean(covered) if covered else 0.0,
        covered_agreement_ci95=interval95(covered),
        blended_agreement=(sum(covered) + escalated) / len(agreement))
    calibration.cascade = replace(calibration.cascade, coverage=calibration.test.coverage)
    return calibration

