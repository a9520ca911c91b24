import pandas as pd
import pytest

from distillery.curation import curate
from distillery.errors import DistilleryError


def _rows(n: int) -> pd.DataFrame:
    rows = [{"id": i + 1, "status": "ok", "response_text": f"label{i % 4}",
             "request_messages": [{"role": "user", "content": f"ticket number {i}"}]} for i in range(n)]
    return pd.DataFrame(rows)


def test_errors_empty_answers_and_duplicates_are_removed():
    rows = _rows(40)
    extra = pd.DataFrame([
        {"id": 41, "status": "error", "response_text": None, "request_messages": [{"role": "user", "content": "x"}]},
        {"id": 42, "status": "ok", "response_text": "  ", "request_messages": [{"role": "user", "content": "y"}]},
        # the same prompt as row 1 up to case and spacing, answered later: the newer answer wins
        {"id": 43, "status": "ok", "response_text": "newer",
         "request_messages": [{"role": "user", "content": "  TICKET   number 0 "}]},
    ])
    dataset, report = curate(pd.concat([rows, extra], ignore_index=True), "triage", min_rows=10)
    assert (report.rows_in, report.dropped_errors, report.dropped_empty, report.dropped_duplicates) == (43, 1, 1, 1)
    assert report.train + report.validation + report.test == 40
    all_rows = [ex for split in dataset.values() for ex in split]
    answers = {ex["log_id"]: ex["messages"][-1]["content"] for ex in all_rows}
    assert 1 not in answers and answers[43] == "newer"
    assert all(ex["messages"][-1]["role"] == "assistant" for ex in all_rows)


def test_split_is_seeded_disjoint_and_complete():
    first, report = curate(_rows(100), "triage", seed=3)
    again, _ = curate(_rows(100), "triage", seed=3)
    other, _ = curate(_rows(100), "triage", seed=4)
    ids = {split: set(first[split]["log_id"]) for split in first}
    assert (report.train, report.validation, report.test) == (80, 10, 10)
    assert not (ids["train"] & ids["test"]) and not (ids["train"] & ids["validation"])
    assert set().union(*ids.values()) == set(range(1, 101))
    assert first["test"]["log_id"] == again["test"]["log_id"]
    assert first["test"]["log_id"] != other["test"]["log_id"]
    assert report.content_hash == curate(_rows(100), "triage", seed=3)[1].content_hash


def test_too_few_rows_names_the_workload_and_what_to_do():
    with pytest.raises(DistilleryError, match=r"workload 'triage' has 5 usable rows.*capture more traffic"):
        curate(_rows(5), "triage", min_rows=20)
