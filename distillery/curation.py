"""From raw log rows to a chat-format training set.

Drops failed exchanges and empty answers, removes exact duplicates of the prompt
(whitespace and case normalized; the newest answer wins), and splits with a seed into
train, validation and test. The test split is held out: nothing downstream trains on it.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass

import pandas as pd
from datasets import Dataset, DatasetDict

from distillery.errors import DistilleryError
from distillery.logstore import STATUS_OK

SPLITS = ("train", "validation", "test")


@dataclass
class CurationReport:
    rows_in: int
    dropped_errors: int
    dropped_empty: int
    dropped_duplicates: int
    train: int
    validation: int
    test: int
    content_hash: str
    first_log_id: int
    last_log_id: int

    def as_dict(self) -> dict:
        return asdict(self)


def normalize_prompt(messages: list[dict]) -> str:
    return json.dumps([(m["role"], re.sub(r"\s+", " ", m["content"]).strip().casefold()) for m in messages])


def curate(
    rows: pd.DataFrame,
    workload: str,
    *,
    seed: int = 0,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    min_rows: int = 20,
) -> tuple[DatasetDict, CurationReport]:
    rows_in = len(rows)
    ok = rows[rows["status"] == STATUS_OK]
    dropped_errors = rows_in - len(ok)
    answered = ok[ok["response_text"].fillna("").str.strip() != ""]
    dropped_empty = len(ok) - len(answered)

    keys = answered["request_messages"].map(normalize_prompt)
    # Rows are ordered by id, so keeping the last of each prompt keeps the newest answer.
    unique = answered[~keys.duplicated(keep="last")]
    dropped_duplicates = len(answered) - len(unique)

    if len(unique) < min_rows:
        raise DistilleryError(
            f"workload {workload!r} has {len(unique)} usable rows after curation "
            f"({rows_in} in, {dropped_errors} failed, {dropped_empty} empty, {dropped_duplicates} duplicates); "
            f"at least {min_rows} are needed to split into train/validation/test: capture more traffic"
        )

    examples = [
        {"log_id": int(row.id), "messages": [*row.request_messages, {"role": "assistant", "content": row.response_text.strip()}]}
        for row in unique.itertuples()
    ]
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(len(order) * test_fraction))
    n_validation = max(1, round(len(order) * validation_fraction))
    parts = {
        "test": order[:n_test],
        "validation": order[n_test : n_test + n_validation],
        "train": order[n_test + n_validation :],
    }
    dataset = DatasetDict({split: Dataset.from_list([examples[i] for i in sorted(parts[split])]) for split in SPLITS})
    report = CurationReport(
        rows_in=rows_in,
        dropped_errors=dropped_errors,
        dropped_empty=dropped_empty,
        dropped_duplicates=dropped_duplicates,
        train=len(parts["train"]),
        validation=len(parts["validation"]),
        test=len(parts["test"]),
        content_hash=dataset_hash(dataset),
        first_log_id=int(unique["id"].min()),
        last_log_id=int(unique["id"].max()),
    )
    return dataset, report


def dataset_hash(dataset: DatasetDict) -> str:
    digest = hashlib.sha256()
    for split in SPLITS:
        for example in dataset[split]:
            digest.update(split.encode())
            digest.update(json.dumps(example, sort_keys=True).encode())
    return digest.hexdigest()[:16]
