"""Task-aware scores of a model's answers against the frontier's, and a bootstrap interval for any of them.

Classification: accuracy, macro-F1 over the labels the frontier used, F1 per label, and the
confusion matrix. Extraction (a JSON object of fields per answer): the share of answers that
parse as a JSON object, field-level precision/recall/F1 over (field, value) pairs, and
exact-record match. ``bootstrap_interval`` resamples rows to put a 95% interval on a metric.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any, Callable, Sequence


def classification_metrics(references: Sequence[str], predictions: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 over the reference labels, F1 per label, and ``confusion[reference][prediction]``."""
    labels = sorted(set(references))
    pairs = Counter(zip(references, predictions))
    predicted = Counter(predictions)
    actual = Counter(references)
    per_label = {}
    for label in labels:
        hits = pairs[(label, label)]
        precision = hits / predicted[label] if predicted[label] else 0.0
        recall = hits / actual[label]
        per_label[label] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    confusion = {reference: {prediction: count for (r, prediction), count in pairs.items() if r == reference}
                 for reference in labels}
    return {
        "accuracy": sum(pairs[(label, label)] for label in labels) / max(len(references), 1),
        "macro_f1": sum(per_label.values()) / max(len(per_label), 1),
        "per_label_f1": per_label,
        "confusion": confusion,
    }


def parse_record(text: str) -> dict | None:
    """The answer as a JSON object, or None when it is not one (a fenced ```json block is accepted)."""
    text = text.strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _fields(record: dict) -> set[tuple[str, str]]:
    return {(key, json.dumps(value, sort_keys=True)) for key, value in record.items() if value not in (None, "", [])}


def extraction_metrics(references: Sequence[str], predictions: Sequence[str]) -> dict[str, Any]:
    """JSON validity, micro field precision/recall/F1 over (field, value) pairs, exact-record match.

    A prediction that does not parse counts as a record with no fields (all its reference
    fields are misses). Empty values (null, "", []) count as absent on both sides.
    """
    valid = true_positive = predicted_fields = reference_fields = exact = 0
    for reference, prediction in zip(references, predictions):
        expected = _fields(parse_record(reference) or {})
        record = parse_record(prediction)
        valid += record is not None
        got = _fields(record or {})
        true_positive += len(expected & got)
        predicted_fields += len(got)
        reference_fields += len(expected)
        exact += record is not None and got == expected
    rows = max(len(references), 1)
    precision = true_positive / predicted_fields if predicted_fields else 0.0
    recall = true_positive / reference_fields if reference_fields else 0.0
    return {
        "json_valid_rate": valid / rows,
        "field_precision": precision,
        "field_recall": recall,
        "field_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "exact_record_match": exact / rows,
    }


def bootstrap_interval(references: Sequence[str], predictions: Sequence[str],
                       metric: Callable[[Sequence[str], Sequence[str]], float], *, resamples: int = 1000,
                       confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap over rows: the ``confidence`` interval of ``metric``."""
    if not references:
        return (0.0, 0.0)
    rng = random.Random(seed)
    n = len(references)
    values = []
    for _ in range(resamples):
        rows = [rng.randrange(n) for _ in range(n)]
        values.append(metric([references[i] for i in rows], [predictions[i] for i in rows]))
    values.sort()
    tail = (1 - confidence) / 2
    return values[int(tail * (resamples - 1))], values[int((1 - tail) * (resamples - 1))]
