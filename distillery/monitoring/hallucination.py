"""Is the small model making things up? One figure per task, from its live answers (served and shadow).

- Extraction: the share of the answer's leaf values (``grounding.leaf_fields``) that do not occur in the
  prompt after normalization (``grounding.unsupported_values``: case, whitespace and quotes folded), and, on shadow
  rows, the share of the answer's leaf fields that the frontier's answer to the same request does not have.
- Free text: on a sample of shadow rows, faithfulness to the prompt (embedding similarity of answer
  and prompt) and agreement with the frontier's answer (the pairwise judge's win-or-tie rate when one
  is configured, else embedding similarity).
- Classification: the share of answers whose label the frontier never gave to the ten training
  prompts most like the request (MiniLM embeddings).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from distillery.grounding import leaf_fields, unsupported_values
from distillery.tasks import parse_record

NEIGHBOURS = 10


def invented_fields(answer: str, frontier_answer: str) -> tuple[int, int]:
    """(leaf fields of ``answer`` whose path the frontier's answer lacks, leaf fields of ``answer``)."""
    paths = {path for path, _ in leaf_fields(parse_record(frontier_answer) or {})}
    leaves = leaf_fields(parse_record(answer) or {})
    return sum(n for (path, _), n in leaves.items() if path not in paths), sum(leaves.values())


@dataclass
class Hallucination:
    """The figures of one workload; None where its task or its traffic does not give one."""

    unsupported_value_share: float | None = None  # extraction
    invented_field_share: float | None = None  # extraction, shadow rows
    faithfulness: float | None = None  # free text: answer vs. prompt
    frontier_agreement: float | None = None  # free text: answer vs. the frontier's answer
    agreement_basis: str | None = None  # "judge <model>" or "embedding similarity"
    unsupported_label_share: float | None = None  # classification
    answers: int = 0  # small-model answers the figures are computed over


def extraction_figures(prompts: Sequence[str], answers: Sequence[str],
                       frontier_answers: Sequence[str | None]) -> Hallucination:
    """``frontier_answers[i]`` is the frontier's answer to the same request (shadow rows), else None."""
    supported = [unsupported_values(parse_record(a), p) for p, a in zip(prompts, answers)]
    invented = [invented_fields(a, f) for a, f in zip(answers, frontier_answers) if f is not None]
    values, fields = sum(t for _, t in supported), sum(t for _, t in invented)
    return Hallucination(
        unsupported_value_share=sum(m for m, _ in supported) / values if values else None,
        invented_field_share=sum(m for m, _ in invented) / fields if fields else None, answers=len(answers))


# requests, frontier answers, small-model answers -> win-or-tie rate of the small model (the pairwise judge)
AgreementJudge = Callable[[list[list[dict]], list[str], list[str]], float]


def free_text_figures(requests: Sequence[list[dict]], prompts: Sequence[str], answers: Sequence[str],
                      frontier_answers: Sequence[str], judge: AgreementJudge | None = None,
                      judge_name: str = "") -> Hallucination:
    """Shadow rows: each request, its prompt text, the small model's and the frontier's answers."""
    from distillery.evaluation.embeddings import cosine_similarities

    if not answers:
        return Hallucination()
    faithfulness = statistics.fmean(cosine_similarities(list(answers), list(prompts)))
    if judge is not None:
        agreement, basis = judge(list(requests), list(frontier_answers), list(answers)), f"judge {judge_name}"
    else:
        agreement = statistics.fmean(cosine_similarities(list(answers), list(frontier_answers)))
        basis = "embedding similarity"
    return Hallucination(faithfulness=faithfulness, frontier_agreement=agreement, agreement_basis=basis,
                         answers=len(answers))


def classification_figures(train_vectors: np.ndarray, train_labels: Sequence[str], live_vectors: np.ndarray,
                           live_labels: Sequence[str], neighbours: int = NEIGHBOURS) -> Hallucination:
    """Unit vectors of the training prompts and of the live prompts the small model labelled."""
    if not len(live_labels) or not len(train_labels):
        return Hallucination()
    k = min(neighbours, len(train_labels))
    nearest = np.argpartition(-(live_vectors @ train_vectors.T), k - 1, axis=1)[:, :k]
    labels = np.asarray(train_labels, dtype=object)
    unsupported = sum(label not in set(labels[row]) for label, row in zip(live_labels, nearest))
    return Hallucination(unsupported_label_share=unsupported / len(live_labels), answers=len(live_labels))
