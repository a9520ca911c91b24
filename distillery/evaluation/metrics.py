"""Task-aware scores of a model's answers against the frontier's, and a bootstrap interval for any of them.

Classification: accuracy, macro-F1 over the labels the frontier used, F1 per label, and the
confusion matrix. Extraction (a JSON object of fields per answer): the share of answers that
parse as a JSON object, precision/recall/F1 over leaf fields (``grounding.leaf_fields``: nested objects
flattened to dotted paths, lists compared as multisets of their elements, so 2 of 3 intents
right earn 2 of 3 credits), and exact-record match. Free text: ROUGE-L F1, chrF (both on a 0-1 scale) and the cosine
similarity of sentence embeddings. Tool calls (``{"tool_calls": [{"name", "arguments"}]}``): the extraction scores
over the whole answer, the share of answers calling exactly the reference's functions, and leaf F1 over the
arguments alone. ``bootstrap_interval`` resamples per-row values to put a
95% interval on any statistic of them.
"""

from __future__ import annotations

import json
import random
import statistics
from collections import Counter
from typing import Any, Callable, NamedTuple, Sequence

from distillery.grounding import leaf_fields
from distillery.tasks import parse_record, tool_calls_of


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


EXTRACTION_SCORING = "leaf fields: nested objects as dotted paths, lists as multisets of their elements"


class RecordMatch(NamedTuple):
    """One answer's extraction counts; sums of these give the corpus scores."""

    valid: bool
    true_positive: int
    predicted: int
    expected: int
    exact: bool


def record_match(reference: str, prediction: str) -> RecordMatch:
    """Leaf fields matched as multisets. A prediction that does not parse counts as a record with no fields (all
    its reference fields are misses). Empty values (null, "", [], {}) count as absent on both sides."""
    expected = leaf_fields(_parse_json(reference) or {})
    record = _parse_json(prediction)
    got = leaf_fields(record or {})
    return RecordMatch(record is not None, sum((expected & got).values()), sum(got.values()), sum(expected.values()),
                       record is not None and got == expected)


def _parse_json(text: str) -> dict | list | None:
    """An answer as a JSON object (``parse_record``), or a JSON list (the arguments of several tool calls)."""
    record = parse_record(text)
    if record is None and text.lstrip().startswith("["):
        try:
            value = json.loads(text)
        except ValueError:
            return None
        return value if isinstance(value, list) else None
    return record


def field_f1(matches: Sequence[RecordMatch]) -> float:
    """Micro F1 over leaf (path, value) pairs."""
    true_positive = sum(m.true_positive for m in matches)
    predicted, expected = sum(m.predicted for m in matches), sum(m.expected for m in matches)
    precision = true_positive / predicted if predicted else 0.0
    recall = true_positive / expected if expected else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def per_field_f1(references: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """F1 of each leaf field (path) over the rows, the lowest first: which fields the model gets wrong."""
    counts: dict[str, list[int]] = {}
    for reference, prediction in zip(references, predictions):
        expected, got = leaf_fields(_parse_json(reference) or {}), leaf_fields(_parse_json(prediction) or {})
        for column, leaves in enumerate((expected & got, got, expected)):
            for (path, _), n in leaves.items():
                counts.setdefault(path, [0, 0, 0])[column] += n
    f1 = {path: 2 * hit / (predicted + expected) for path, (hit, predicted, expected) in counts.items()}
    return dict(sorted(f1.items(), key=lambda item: (item[1], item[0])))


def extraction_metrics(references: Sequence[str], predictions: Sequence[str]) -> dict[str, Any]:
    """JSON validity, micro precision/recall/F1 over leaf (path, value) pairs (and per field), exact-record match."""
    matches = [record_match(r, p) for r, p in zip(references, predictions)]
    true_positive = sum(m.true_positive for m in matches)
    predicted, expected = sum(m.predicted for m in matches), sum(m.expected for m in matches)
    rows = max(len(matches), 1)
    return {
        "json_valid_rate": sum(m.valid for m in matches) / rows,
        "field_precision": true_positive / predicted if predicted else 0.0,
        "field_recall": true_positive / expected if expected else 0.0,
        "field_f1": field_f1(matches),
        "exact_record_match": sum(m.exact for m in matches) / rows,
        "per_field_f1": per_field_f1(references, predictions),
    }


TOOL_CALL_SCORING = ("function names exact (in order), arguments by leaf fields as in extraction; the headline "
                     "counts both, each name and each argument leaf a field")


def tool_call_metrics(references: Sequence[str], predictions: Sequence[str]) -> dict[str, Any]:
    """Tool-call answers (``tasks.tool_call_answer``): the share with exactly the reference's function names, leaf F1
    over the arguments alone, and the extraction metrics over the whole answer (names and arguments)."""
    names, argument_matches = [], []
    for reference, prediction in zip(references, predictions):
        expected, got = tool_calls_of(reference) or [], tool_calls_of(prediction) or []
        names.append([c["name"] for c in expected] == [c["name"] for c in got])
        argument_matches.append(record_match(json.dumps([c["arguments"] for c in expected]),
                                             json.dumps([c["arguments"] for c in got])))
    return {**extraction_metrics(references, predictions),
            "name_accuracy": sum(names) / max(len(names), 1), "arguments_f1": field_f1(argument_matches)}


def free_text_metrics(references: Sequence[str], predictions: Sequence[str],
                      similarities: Sequence[float]) -> dict[str, Any]:
    """ROUGE-L F1 (mean over rows), corpus chrF, and the mean of the given embedding ``similarities``."""
    from rouge_score.rouge_scorer import RougeScorer
    from sacrebleu.metrics import CHRF

    scorer = RougeScorer(["rougeL"])
    rouge = [scorer.score(r, p)["rougeL"].fmeasure for r, p in zip(references, predictions)]
    return {
        "rouge_l": statistics.fmean(rouge) if rouge else 0.0,
        "chrf": CHRF().corpus_score(list(predictions), [list(references)]).score / 100 if references else 0.0,
        "embedding_similarity": statistics.fmean(similarities) if similarities else 0.0,
    }


def bootstrap_interval(values: Sequence[Any], statistic: Callable[[Sequence[Any]], float] = statistics.fmean, *,
                       resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap over rows: the ``confidence`` interval of ``statistic`` of per-row ``values``."""
    if not values:
        return (0.0, 0.0)
    rng = random.Random(seed)
    n = len(values)
    samples = sorted(statistic([values[rng.randrange(n)] for _ in range(n)]) for _ in range(resamples))
    tail = (1 - confidence) / 2
    return samples[int(tail * (resamples - 1))], samples[int((1 - tail) * (resamples - 1))]
