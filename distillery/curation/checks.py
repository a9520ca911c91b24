"""Checks on a curated dataset that decide whether training may use it (framework-free).

A blocking check that fails makes the dataset version unusable: it is recorded with the version,
and training refuses that version whoever asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from datasets import DatasetDict

from distillery.curation.dataset import LEAKAGE_THRESHOLD, leaked_test_rows
from distillery.curation.pii import find_pii


@dataclass
class CheckOutcome:
    passed: bool
    description: str
    details: dict


def enough_rows(dataset: DatasetDict, min_train_rows: int) -> CheckOutcome:
    n = len(dataset["train"])
    return CheckOutcome(n >= min_train_rows, f"{n} train rows (need {min_train_rows})", {"train_rows": n})


def no_pii_in_train(dataset: DatasetDict) -> CheckOutcome:
    leaks = [(ex["log_id"], kinds) for ex in dataset["train"]
             for kinds in [sorted({k for m in ex["messages"] for k in find_pii(m["content"])})] if kinds]
    return CheckOutcome(not leaks, f"{len(leaks)} train examples still contain PII",
                        {"examples": [f"log {i}: {', '.join(k)}" for i, k in leaks[:10]]})


def no_test_leakage(dataset: DatasetDict, near_duplicate_threshold: float = LEAKAGE_THRESHOLD) -> CheckOutcome:
    """No test prompt may be an exact or near duplicate of a train prompt: the test set must stay held out."""
    test = dataset["test"]
    leaked_rows = leaked_test_rows([ex["messages"][:-1] for ex in dataset["train"]],
                                   [ex["messages"][:-1] for ex in test], near_duplicate_threshold)
    leaked = sorted(test[i]["log_id"] for i in leaked_rows)
    return CheckOutcome(not leaked, f"{len(leaked)} test prompts are exact or near duplicates of train prompts",
                        {"log_ids": leaked[:20]})


def label_balance(label_counts: dict[str, int], max_ratio: float = 10.0) -> CheckOutcome:
    if not label_counts:
        return CheckOutcome(True, "not a classification workload", {})
    most, least = max(label_counts.values()), min(label_counts.values())
    ratio = most / least
    return CheckOutcome(ratio <= max_ratio, f"largest/smallest label ratio {ratio:.1f} (warn above {max_ratio:g})",
                        {"ratio": round(ratio, 2)})


def blocking_checks(dataset: DatasetDict, min_train_rows: int) -> dict[str, CheckOutcome]:
    """The checks a dataset version must pass before anything trains on it."""
    return {"enough_rows": enough_rows(dataset, min_train_rows), "no_pii_in_train": no_pii_in_train(dataset),
            "no_test_leakage": no_test_leakage(dataset)}
