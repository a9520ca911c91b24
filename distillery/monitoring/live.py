"""Live figures of a workload after deployment: shadow agreement, invalid answers, drift, hallucination, money
saved.

Drift compares the prompts the gateway saw since the training data was cut with the training
split: the population stability index (PSI) of prompt length (in characters, ten quantile bins
of the training prompts) and of the prompts' nearest cluster among eight k-means clusters of
the training prompts' MiniLM embeddings; and, for classification workloads, the total-variation
distance between the frontier's label distribution in training and live. PSI below 0.1 is
usually read as stable and above 0.25 as a real shift. Hallucination figures per task are in
``hallucination``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from distillery.monitoring.hallucination import (AgreementJudge, Hallucination, classification_figures,
                                                 extraction_figures, free_text_figures)
from distillery.grounding import CALLER_ROLES, message_text
from distillery.settings import setting
from distillery.store import SERVED_BY_AUDIT, SERVED_BY_FRONTIER, SERVED_BY_SHADOW, SERVED_BY_SMALL, STATUS_OK
from distillery.tasks import CLASSIFICATION, EXTRACTION, FREE_TEXT

_EPSILON = 1e-4  # an empty bin counts as this share, so the PSI stays finite


def psi(expected_shares: Sequence[float], actual_shares: Sequence[float]) -> float:
    """Population stability index between two distributions over the same bins."""
    total = 0.0
    for e, a in zip(expected_shares, actual_shares):
        e, a = max(e, _EPSILON), max(a, _EPSILON)
        total += (a - e) * math.log(a / e)
    return total


def _shares(bins: np.ndarray, count: int) -> np.ndarray:
    return np.bincount(bins, minlength=count) / max(len(bins), 1)


def length_psi(train: Sequence[str], live: Sequence[str], bins: int = 10) -> float:
    train_lengths = np.array([len(t) for t in train], dtype=float)
    edges = np.unique(np.quantile(train_lengths, np.linspace(0, 1, bins + 1)[1:-1]))
    count = len(edges) + 1
    return psi(_shares(np.searchsorted(edges, train_lengths, side="right"), count),
               _shares(np.searchsorted(edges, np.array([len(t) for t in live], dtype=float), side="right"), count))


def cluster_psi(train_vectors: np.ndarray, live_vectors: np.ndarray, clusters: int = 8, seed: int = 0) -> float:
    """PSI of the nearest-centroid shares, centroids from k-means on the training vectors."""
    rng = np.random.default_rng(seed)
    k = min(clusters, len(train_vectors))
    centroids = train_vectors[rng.choice(len(train_vectors), k, replace=False)]
    for _ in range(20):
        nearest = np.argmax(train_vectors @ centroids.T, axis=1)  # unit vectors: cosine
        for c in range(k):
            members = train_vectors[nearest == c]
            if len(members):
                centroid = members.mean(axis=0)
                centroids[c] = centroid / (np.linalg.norm(centroid) or 1.0)
    train_bins = np.argmax(train_vectors @ centroids.T, axis=1)
    live_bins = np.argmax(live_vectors @ centroids.T, axis=1)
    return psi(_shares(train_bins, k), _shares(live_bins, k))


def label_shift(train_labels: Sequence[str], live_labels: Sequence[str]) -> float:
    """Total-variation distance between two label distributions (0: same, 1: disjoint)."""
    train, live = pd.Series(train_labels).value_counts(normalize=True), pd.Series(live_labels).value_counts(
        normalize=True)
    return float(0.5 * train.subtract(live, fill_value=0).abs().sum())


@dataclass
class LiveReport:
    workload: str
    live_rows: int  # successful frontier exchanges since the training data was cut
    small_served: int  # answered by the small model
    fallbacks: int  # small model asked, frontier answered
    shadow_compared: int
    shadow_agreement: float | None
    invalid_rate: float | None  # of small-model answers (served and shadow)
    length_psi: float | None
    cluster_psi: float | None
    label_shift: float | None  # classification only
    money_saved_usd: float  # small-served requests at the frontier's logged cost, less the small model's cost
    hallucination: Hallucination = field(default_factory=Hallucination)
    notes: list[str] = field(default_factory=list)
    # A cascade route: the calls escalated to the frontier, the share the small model answered alone (against the
    # coverage evaluation measured), and the audited calls' agreement with the frontier.
    escalated: int = 0
    cascade_coverage: float | None = None
    evaluated_coverage: float | None = None
    audited: int = 0
    audited_agreement: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MonitoringPolicy:
    """When live traffic fails a check of ``live_monitoring``."""

    min_shadow_agreement: float = setting(0.8, "Shadow agreement below this fails its check.")
    max_psi: float = setting(0.25, "Prompt PSI (length or embedding clusters) above this is drift.")
    max_label_shift: float = setting(0.15, "Total-variation distance of the label distributions.")
    max_invalid_rate: float = setting(0.05, "Invalid small-model answers above this fail.")
    max_unsupported_value_share: float = setting(0.1, "Extraction: answer values the prompt does not hold "
                                                 "(grounding.unsupported_values).")
    max_invented_field_share: float = setting(0.1, "Extraction: answer fields the frontier's answer lacks.")
    min_faithfulness: float = setting(0.3, "Free text: embedding similarity of answer and prompt.")
    min_frontier_agreement: float = setting(0.6, "Free text: the judge's win-or-tie rate when a judge is "
                                            "configured, else embedding similarity to the frontier's answer.")
    max_unsupported_label_share: float = setting(0.1, "Classification: labels the frontier never gave the ten most "
                                                 "similar training prompts.")
    max_coverage_drop: float = setting(0.2, "Cascade: live coverage below the evaluated one by more than this "
                                       "(0.2: 20 points) steps the route back.")
    min_audited_agreement: float = setting(0.8, "Cascade: audited calls' agreement below this steps the route back.")
    min_cascade_calls: int = setting(20, "Cascade: fewer calls (or audits) give no figure.")

    def failures(self, report: LiveReport) -> dict[str, str | None]:
        """Per check, why it fails (None: it passes, or there is not enough traffic to say)."""
        def above(value: float | None, limit: float, what: str) -> str | None:
            return f"{what} {value:.3f} > {limit:g}" if value is not None and value > limit else None

        agreement = report.shadow_agreement
        return {
            "shadow_agreement": (f"shadow agreement {agreement:.1%} < {self.min_shadow_agreement:.0%}"
                                 if agreement is not None and agreement < self.min_shadow_agreement else None),
            "prompt_drift": above(max(report.length_psi or 0, report.cluster_psi or 0) if report.length_psi is not None
                                  else None, self.max_psi, "prompt PSI (length or embedding clusters)"),
            "label_shift": above(report.label_shift, self.max_label_shift, "label distribution shift"),
            "invalid_answers": above(report.invalid_rate, self.max_invalid_rate, "invalid-answer rate"),
            "hallucination": self.hallucination_failure(report.hallucination),
            "cascade_coverage": self.coverage_failure(report),
            "audited_agreement": (f"audited agreement {report.audited_agreement:.1%} < {self.min_audited_agreement:.0%}"
                                  f" over {report.audited} audited calls"
                                  if report.audited_agreement is not None
                                  and report.audited_agreement < self.min_audited_agreement else None),
        }

    def coverage_failure(self, report: LiveReport) -> str | None:
        coverage, evaluated = report.cascade_coverage, report.evaluated_coverage
        if coverage is None or evaluated is None or coverage >= evaluated - self.max_coverage_drop:
            return None
        return (f"cascade coverage {coverage:.1%} over {report.small_served + report.escalated} calls is more than "
                f"{100 * self.max_coverage_drop:.0f} points below the evaluated {evaluated:.1%}")

    @staticmethod
    def measured(report: LiveReport) -> dict[str, bool]:
        """Per check, whether the traffic gave it a figure to judge (a check without one has not run)."""
        figures = report.hallucination
        return {
            "shadow_agreement": report.shadow_agreement is not None,
            "prompt_drift": report.length_psi is not None,
            "label_shift": report.label_shift is not None,
            "invalid_answers": report.invalid_rate is not None,
            "hallucination": any(value is not None for value in (
                figures.unsupported_value_share, figures.invented_field_share, figures.faithfulness,
                figures.frontier_agreement, figures.unsupported_label_share)),
            "cascade_coverage": report.cascade_coverage is not None and report.evaluated_coverage is not None,
            "audited_agreement": report.audited_agreement is not None,
        }

    def hallucination_failure(self, figures: Hallucination) -> str | None:
        """The first hallucination threshold crossed, as a reason (None: within, or no figure yet)."""
        def outside(value: float | None, limit: float, what: str, low: bool = False) -> str | None:
            if value is None or (value >= limit if low else value <= limit):
                return None
            return f"{what} {value:.1%} {'<' if low else '>'} {limit:.0%} over {figures.answers} answers"

        reasons = [outside(figures.unsupported_value_share, self.max_unsupported_value_share,
                           "answer values not in the prompt"),
                   outside(figures.invented_field_share, self.max_invented_field_share,
                           "answer fields the frontier's answer lacks"),
                   outside(figures.faithfulness, self.min_faithfulness, "faithfulness to the prompt", low=True),
                   outside(figures.frontier_agreement, self.min_frontier_agreement,
                           f"agreement with the frontier ({figures.agreement_basis})", low=True),
                   outside(figures.unsupported_label_share, self.max_unsupported_label_share,
                           "labels the frontier never gave similar prompts")]
        return next((reason for reason in reasons if reason), None)


def live_report(rows: pd.DataFrame, workload: str, *, train_prompts: list[list[dict]],
                train_answers: list[str], since_log_id: int, task: str,
                small_usd_per_request: float, min_rows: int = 20, free_text_sample: int = 50,
                judge: AgreementJudge | None = None, judge_name: str = "", evaluated_coverage: float | None = None,
                min_cascade_calls: int = 20) -> LiveReport:
    """The figures over ``rows`` (the workload's log rows) newer than ``since_log_id``; a cascade's against the
    ``evaluated_coverage``."""
    ok = rows[rows["status"] == STATUS_OK]
    served_by = ok["served_by"].fillna(SERVED_BY_FRONTIER)
    live = ok[(served_by == SERVED_BY_FRONTIER) & (ok["id"] > since_log_id)]
    small = ok[served_by == SERVED_BY_SMALL]
    shadow = ok[served_by == SERVED_BY_SHADOW]
    fallbacks = int(ok["request_params"].map(lambda p: isinstance(p, dict) and "distillery_fallback" in p).sum())
    escalated = int(ok["request_params"].map(lambda p: isinstance(p, dict) and "distillery_escalated" in p).sum())
    covered = int(small["confidence"].notna().sum()) if "confidence" in small else 0  # a cascade's small answers
    audits = [p.get("agrees_with_frontier") for p in ok.loc[served_by == SERVED_BY_AUDIT, "request_params"]
              if isinstance(p, dict) and p.get("agrees_with_frontier") is not None]
    compared = [p.get("agrees_with_frontier") for p in shadow["request_params"] if isinstance(p, dict)]
    compared = [c for c in compared if c is not None]
    shadow_valid = [p.get("valid_answer", True) for p in shadow["request_params"] if isinstance(p, dict)]
    invalid_served = sum(1 for p in ok["request_params"] if isinstance(p, dict)
                         and str(p.get("distillery_fallback", "")).startswith("invalid answer"))
    answers = len(small) + invalid_served + len(shadow_valid)  # every answer the small model gave
    invalid = invalid_served + shadow_valid.count(False)
    frontier_cost = ok.loc[served_by == SERVED_BY_FRONTIER, "cost_usd"].dropna()
    per_request = float(frontier_cost.mean()) if len(frontier_cost) else 0.0
    notes = [] if len(frontier_cost) else ["no frontier cost logged: money saved counts 0 per request"]
    report = LiveReport(
        workload=workload, live_rows=len(live), small_served=len(small), fallbacks=fallbacks,
        shadow_compared=len(compared), shadow_agreement=sum(compared) / len(compared) if compared else None,
        invalid_rate=invalid / answers if answers else None,
        length_psi=None, cluster_psi=None, label_shift=None,
        # an escalated call was asked of the small model too
        money_saved_usd=len(small) * per_request - (len(small) + escalated) * small_usd_per_request, notes=notes,
        escalated=escalated, evaluated_coverage=evaluated_coverage, audited=len(audits),
        cascade_coverage=covered / (covered + escalated) if covered + escalated >= min_cascade_calls else None,
        audited_agreement=sum(audits) / len(audits) if len(audits) >= min_cascade_calls else None,
    )
    from distillery.evaluation import encode

    train_texts = [message_text(p, CALLER_ROLES) for p in train_prompts]
    train_vectors = None
    small_answers = pd.concat([small, shadow])
    # The frontier's answer to the request a shadow row copied (request_params.shadow_of).
    frontier_by_uid = dict(zip(ok["uid"], ok["response_text"])) if task in (EXTRACTION, FREE_TEXT) else {}
    if task == EXTRACTION:
        report.hallucination = extraction_figures(
            [message_text(m) for m in small_answers["request_messages"]], list(small_answers["response_text"]),
            [frontier_by_uid.get(p.get("shadow_of")) if isinstance(p, dict) else None
             for p in small_answers["request_params"]])
    elif task == FREE_TEXT:
        sample = shadow.tail(free_text_sample)
        paired = [(m, a, frontier_by_uid.get(p.get("shadow_of")))
                  for m, a, p in zip(sample["request_messages"], sample["response_text"], sample["request_params"])
                  if isinstance(p, dict) and frontier_by_uid.get(p.get("shadow_of"))]
        report.hallucination = free_text_figures(
            [m for m, _, _ in paired], [message_text(m, CALLER_ROLES) for m, _, _ in paired], [a for _, a, _ in paired],
            [f for _, _, f in paired], judge=judge, judge_name=judge_name)
    elif task == CLASSIFICATION and len(small_answers) and train_texts:
        train_vectors = encode(train_texts)
        report.hallucination = classification_figures(
            train_vectors, train_answers,
            encode([message_text(m, CALLER_ROLES) for m in small_answers["request_messages"]]),
            list(small_answers["response_text"]))

    if len(live) < min_rows:
        report.notes.append(f"{len(live)} live rows since training: drift needs at least {min_rows}")
        return report
    live_texts = [message_text(m, CALLER_ROLES) for m in live["request_messages"]]
    report.length_psi = length_psi(train_texts, live_texts)
    report.cluster_psi = cluster_psi(encode(train_texts) if train_vectors is None else train_vectors,
                                     encode(live_texts))
    if task == CLASSIFICATION:
        report.label_shift = label_shift(train_answers, list(live["response_text"]))
    return report
