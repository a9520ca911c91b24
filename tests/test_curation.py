import hashlib
import json

import pandas as pd
import numpy as np
import pytest
from datasets import Dataset, DatasetDict

from distillery.curation import curate, data_card, infer_task
from distillery.errors import DistilleryError
from distillery.tasks import CLASSIFICATION, EXTRACTION, FREE_TEXT, TOOL_CALL, tool_calls_of


def _row(i: int, prompt: str, answer: str | None, status: str = "ok", finish_reason: str = "stop") -> dict:
    return {"id": i, "status": status, "response_text": answer, "finish_reason": finish_reason,
            "request_messages": [{"role": "user", "content": prompt}]}


def _prompt(i: int) -> str:
    """Prompts that share no more than chance 3-grams, so near-duplicate removal leaves them all."""
    return "ticket " + hashlib.sha256(str(i).encode()).hexdigest()[:24]


def split(*prompts: str) -> Dataset:
    """A split of single-turn examples with these prompts, for the dataset checks."""
    return Dataset.from_list([{"log_id": i, "messages": [{"role": "user", "content": p},
                                                         {"role": "assistant", "content": "a"}]}
                              for i, p in enumerate(prompts)])


def _rows(n: int, labels=("billing", "shipping", "account", "returns")) -> pd.DataFrame:
    return pd.DataFrame([_row(i + 1, _prompt(i), labels[i % len(labels)]) for i in range(n)])


def test_each_filter_drops_and_counts_its_rows():
    extra = pd.DataFrame([
        _row(101, "x", None, status="error"),
        _row(102, "y", "  "),
        _row(103, "z", "billing", finish_reason="length"),
        _row(104, "w", "I'm sorry, but I can't help with that."),
        _row(105, "v", "a label nobody else uses"),
        _row(106, "  " + _prompt(0).upper().replace(" ", "   "), "billing"),  # row 1 up to case and spacing
    ])
    dataset, report = curate(pd.concat([_rows(40), extra], ignore_index=True), "triage", min_rows=10)
    assert report.task == CLASSIFICATION and report.labels == ["account", "billing", "returns", "shipping"]
    assert report.steps == {"rows in": 46, "malformed rows": 0, "failed exchanges": 1, "empty answers": 1, "truncated answers": 1,
                            "refusals": 1, "answers outside the label set": 1, "exact duplicate prompts": 1,
                            "near-duplicate prompts": 0}
    assert report.train + report.validation + report.test == 40
    assert report.log_ids[-1] == 106 and 1 not in report.log_ids  # the newest of two identical rows


def test_conflicting_duplicates_keep_the_most_common_answer():
    rows = _rows(40)
    rows = pd.concat([rows, pd.DataFrame([_row(200, _prompt(1), "billing"),
                                          _row(201, _prompt(1), "billing")])], ignore_index=True)
    dataset, report = curate(rows, "triage", min_rows=10)
    kept = [ex for split in dataset.values() for ex in split if ex["messages"][0]["content"] == _prompt(1)]
    assert [ex["messages"][-1]["content"] for ex in kept] == ["billing"]
    assert kept[0]["log_id"] == 201 and report.duplicate_conflicts == 1


def test_pii_is_scrubbed_in_prompts_and_answers_and_counted():
    rows = _rows(30)
    rows.loc[0, "request_messages"] = [{"role": "user", "content": "I am jane@example.com, card 4111 1111 1111 1111"}]
    dataset, report = curate(rows, "triage", min_rows=10)
    texts = json.dumps([ex["messages"] for split in dataset.values() for ex in split])
    assert "jane@example.com" not in texts and "<EMAIL>" in texts and "<CARD>" in texts
    assert report.pii == {"EMAIL": 1, "CARD": 1}


def test_classification_split_is_stratified_seeded_and_disjoint():
    first, report = curate(_rows(200), "triage", seed=3)
    again, _ = curate(_rows(200), "triage", seed=3)
    other, _ = curate(_rows(200), "triage", seed=4)
    ids = {split: set(first[split]["log_id"]) for split in first}
    assert (report.train, report.validation, report.test) == (160, 20, 20)
    assert not (ids["train"] & ids["test"]) and not (ids["train"] & ids["validation"])
    assert set().union(*ids.values()) == set(range(1, 201))
    test_labels = [ex["messages"][-1]["content"] for ex in first["test"]]
    assert {label: test_labels.count(label) for label in set(test_labels)} == {
        "billing": 5, "shipping": 5, "account": 5, "returns": 5}
    assert first["test"]["log_id"] == again["test"]["log_id"] != other["test"]["log_id"]


def test_free_text_and_extraction_split_by_time_newest_to_test():
    rows = pd.DataFrame([_row(i, _prompt(i), json.dumps({"city": f"c{i}"})) for i in range(1, 51)])
    rows.loc[5, "response_text"] = "not json"
    dataset, report = curate(rows, "extract", task="auto", min_rows=10)
    assert report.task == EXTRACTION and report.steps["answers not a JSON object"] == 1
    assert max(dataset["train"]["log_id"]) < min(dataset["validation"]["log_id"]) < min(dataset["test"]["log_id"])
    assert dataset["test"]["log_id"][-1] == 50


def test_task_inference():
    assert infer_task(pd.Series(["a", "b", "a", "b"])) == CLASSIFICATION
    assert infer_task(pd.Series(['{"x": 1}', '{"y": 2}'])) == EXTRACTION
    assert infer_task(pd.Series([f"a long and unique answer number {i}" for i in range(10)])) == FREE_TEXT


def test_data_card_lists_steps_labels_and_pii():
    dataset, report = curate(_rows(40), "triage", min_rows=10)
    card = data_card("triage", report, dataset)
    assert "| rows in | 40 |" in card and "| billing | 10 |" in card and "PII replaced: none." in card


def test_too_few_rows_names_the_workload_and_what_to_do():
    with pytest.raises(DistilleryError, match=r"workload 'triage' has 5 usable rows.*capture more traffic"):
        curate(_rows(5), "triage", min_rows=20)


def test_checks_catch_pii_and_leakage_that_curation_would_not_leave():
    from distillery.curation import checks

    dirty = DatasetDict({"train": split("mail bob@example.com", "Same prompt"), "validation": split("v"),
                         "test": split("  same PROMPT ")})
    assert not checks.no_pii_in_train(dirty).passed
    assert not checks.no_test_leakage(dirty).passed
    dataset, report = curate(_rows(40), "triage", min_rows=10)
    assert checks.no_pii_in_train(dataset).passed and checks.no_test_leakage(dataset).passed
    assert not checks.enough_rows(dataset, 1000).passed
    assert not checks.label_balance({"a": 100, "b": 2}).passed and checks.label_balance({"a": 3, "b": 2}).passed


def test_near_duplicates_are_merged_but_distinct_prompts_kept():
    rows = pd.DataFrame([
        _row(1, "My card payment was declined at the supermarket yesterday", "billing"),
        _row(2, "My card paymnet was declined at the supermarket yesterday", "billing"),   # one typo
        _row(3, "my card payment was declined at the supermarket yesterday!", "billing"),  # case and punctuation
        _row(4, "Where is the parcel I ordered last week?", "billing"),
        *[_row(10 + i, _prompt(i), "account") for i in range(30)],
    ])
    dataset, report = curate(rows, "triage", min_rows=5, near_duplicate_threshold=0.75)
    kept = {ex["log_id"] for split in dataset.values() for ex in split}
    assert {1, 2, 3} & kept == {3} and 4 in kept
    assert report.steps["near-duplicate prompts"] >= 2
    _, without = curate(rows, "triage", min_rows=5, near_duplicate_threshold=None)
    assert "near-duplicate prompts" not in without.steps


def test_leakage_check_sees_near_duplicates():
    from distillery.curation import checks

    leaky = DatasetDict({"train": split("How do I top up my card with a bank transfer?"), "validation": split("v"),
                         "test": split("How do I top up my card with a bank transfer??")})
    assert not checks.no_test_leakage(leaky).passed


def test_malformed_rows_are_counted_and_skipped_not_fatal():
    rows = _rows(30)
    bad = pd.DataFrame([
        {**_row(90, "x", "billing"), "request_messages": "not a list"},
        {**_row(91, "x", "billing"), "request_messages": [{"role": "user"}]},          # no content
        {**_row(92, "x", "billing"), "request_messages": [{"role": "user", "content": 7}]},
        {**_row(93, "x", None), "response_text": {"unexpected": "object"}},
    ])
    dataset, report = curate(pd.concat([rows, bad], ignore_index=True), "triage", min_rows=10)
    assert report.steps["malformed rows"] == 4
    assert report.train + report.validation + report.test == 30
    assert "| dropped: malformed rows | 4 |" in data_card("triage", report, dataset)


def test_extraction_answers_must_satisfy_the_schema_and_long_examples_are_dropped():
    answers = [{"city": "Paris", "date": "2026-01-01"}] * 20 + [{"city": 5}, {"date": "x"}]
    rows = pd.DataFrame([_row(i + 1, _prompt(i), json.dumps(a)) for i, a in enumerate(answers)])
    rows.loc[0, "request_messages"] = [{"role": "user", "content": "word " * 300}]
    schema = {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}
    _, report = curate(rows, "extract", min_rows=5, json_schema=schema, max_tokens=100,
                       count_tokens=lambda text: len(text.split()))
    assert report.task == EXTRACTION
    assert report.steps["over 100 tokens"] == 1 and report.steps["answers violating the JSON schema"] == 2


def test_a_held_out_prompt_that_repeats_a_train_prompt_moves_to_train():
    from distillery.curation.dataset import _move_leaks_to_train, normalize_prompt
    from distillery.curation.neardup import signatures
    from distillery.grounding import CALLER_ROLES, message_text

    def example(system: str, text: str) -> dict:
        return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": text},
                             {"role": "assistant", "content": "{}"}]}

    examples = [example("asked for: date", "Yes, that is correct."), example("asked for: city", "Going to Fresno."),
                example("asked for nothing", "Yes, that is correct."), example("asked for nothing", "Two tickets please.")]
    parts = {"train": [0, 1], "validation": [], "test": [2, 3]}
    prompts = [ex["messages"][:-1] for ex in examples]
    keys = np.array([normalize_prompt(messages) for messages in prompts], dtype=object)
    sigs = signatures([message_text(messages, CALLER_ROLES) for messages in prompts])
    # The same words under another system prompt are no exact duplicate, but the caller wrote the same thing.
    assert _move_leaks_to_train(parts, keys, sigs, 0.75) == 1
    assert parts == {"train": [0, 1, 2], "validation": [], "test": [3]}


TOOLS = [{"type": "function", "function": {"name": "route", "parameters": {
    "type": "object", "properties": {"queue": {"type": "string", "enum": ["billing", "shipping"]}},
    "required": ["queue"]}}}]


def _call(arguments: str) -> list[dict]:
    return [{"id": "call_1", "type": "function", "function": {"name": "route", "arguments": arguments}}]


def test_tool_call_answers_are_the_calls_and_bad_ones_are_counted_never_trained_on():
    rows = pd.DataFrame([{**_row(i + 1, _prompt(i), None), "request_params": {"tools": TOOLS},
                          "tool_calls": _call(json.dumps({"queue": ("billing", "shipping")[i % 2]}))}
                         for i in range(40)] + [
        {**_row(41, "a", None), "request_params": {"tools": TOOLS}, "tool_calls": _call("{not json")},
        {**_row(42, "b", "I will route it."), "request_params": {"tools": TOOLS}, "tool_calls": None},
        {**_row(43, "c", None), "request_params": {"tools": TOOLS}, "tool_calls": _call('{"queue": "nowhere"}')}])
    dataset, report = curate(rows, "router", min_rows=10)
    assert report.task == TOOL_CALL and report.schema_source == "the requests' tools"
    assert report.steps["answers without a tool call"] == 1
    assert report.steps["tool calls whose arguments are not JSON"] == 1
    assert report.steps["answers violating the JSON schema"] == 1  # "nowhere" is outside the queue's enum
    answers = [ex["messages"][-1]["content"] for split in dataset.values() for ex in split]
    assert len(answers) == 40 and all(tool_calls_of(a)[0]["name"] == "route" for a in answers)
    assert json.loads(answers[0]) == {"tool_calls": [{"name": "route", "arguments": {"queue": "billing"}}]}
    assert "carried another: 0" in data_card("router", report, dataset)


def test_an_extraction_schema_comes_from_the_traffic_the_newest_wins_and_older_rows_are_counted():
    old = {"type": "object", "properties": {"order": {"type": "string"}}}
    new = {"type": "object", "properties": {"order": {"type": "string"}}, "required": ["order"]}
    rows = pd.DataFrame([{**_row(i + 1, _prompt(i), json.dumps({"order": f"A{i}"})), "request_params": {
        "response_format": {"type": "json_schema", "json_schema": {"name": "o", "schema": old if i < 10 else new}}}}
        for i in range(30)] + [{**_row(31, "x", json.dumps({"amount": 3})), "request_params": {
            "text": {"format": {"type": "json_schema", "name": "o", "schema": new}}}}])
    _, report = curate(rows, "orders", min_rows=10)
    assert report.task == EXTRACTION and report.json_schema == new
    assert report.schema_source == "the requests' response_format" and report.rows_under_older_schemas == 10
    assert report.steps["answers violating the JSON schema"] == 1  # the Responses call's answer lacks "order"
    _, configured = curate(rows, "orders", min_rows=10, json_schema=old)
    assert configured.schema_source == "run config" and configured.steps["answers violating the JSON schema"] == 0


def test_a_schema_from_the_traffic_that_is_not_a_schema_is_a_clear_error():
    rows = pd.DataFrame([{**_row(i + 1, _prompt(i), json.dumps({"order": "A1"})), "request_params": {
        "response_format": {"type": "json_schema", "json_schema": {"name": "o", "schema": {"type": 5}}}}}
        for i in range(30)])
    with pytest.raises(DistilleryError, match="the JSON schema from the requests' response_format is not a valid"):
        curate(rows, "orders", min_rows=10)


def test_curation_measures_which_string_fields_are_copies_of_the_users_text():
    """Issue 26's first piece: the fields grounded decoding may hold to copies of the request."""
    rows = pd.DataFrame([_row(i, f"book a table for {i % 7 + 2} people in Paris under Lee, ticket {i}",
                              json.dumps({"city": "Paris", "name": "Lee" if i % 10 else "Mr Lee", "party_size": i % 7 + 2,
                                          "cuisine": "french"}))
                         for i in range(1, 61)])
    schema = {"type": "object", "properties": {"party_size": {"type": "integer"}, "city": {"type": "string"},
                                               "name": {"type": "string"}, "cuisine": {"type": "string"}}}
    dataset, report = curate(rows, "booking", task="auto", min_rows=10, near_duplicate_threshold=None,
                             json_schema=schema)
    assert report.task == EXTRACTION
    # numbers are not strings; the cuisine is never in the text; the name is a copy in 9 rows of 10
    assert report.copy_rates == {"city": 1.0, "cuisine": 0.0, "name": pytest.approx(0.9)}
    assert report.copied_fields == ["city"]
    card = data_card("booking", report, dataset)
    assert "| `city` | 100.0% | yes |" in card and "| `name` | 90.0% | no |" in card
    # the share is a setting; a field is only marked copied when the schema makes it a plain string
    _, lenient = curate(rows, "booking", task="auto", min_rows=10, near_duplicate_threshold=None, json_schema=schema,
                        copied_share=0.9)
    assert lenient.copied_fields == ["city", "name"]
    _, enum = curate(rows, "booking", task="auto", min_rows=10, near_duplicate_threshold=None, json_schema={
        **schema, "properties": {**schema["properties"], "city": {"enum": ["Paris", "Rome"]}}})
    _, schemaless = curate(rows, "booking", task="auto", min_rows=10, near_duplicate_threshold=None)
    assert enum.copied_fields == [] and schemaless.copied_fields == []
    # trained in one spelling: compact, keys in the schema's order
    assert dataset["train"][0]["messages"][-1]["content"].startswith('{"party_size":')
