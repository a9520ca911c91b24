import pytest

from distillery.metrics import bootstrap_interval, classification_metrics, extraction_metrics, parse_record


def test_classification_metrics_by_hand():
    references = ["a", "a", "b", "b", "c"]
    predictions = ["a", "b", "b", "b", "a"]
    scores = classification_metrics(references, predictions)
    assert scores["accuracy"] == pytest.approx(3 / 5)
    # a: P=1/2 R=1/2 F1=.5; b: P=2/3 R=1 F1=.8; c: P=0 R=0 F1=0
    assert scores["per_label_f1"] == pytest.approx({"a": 0.5, "b": 0.8, "c": 0.0})
    assert scores["macro_f1"] == pytest.approx(1.3 / 3)
    assert scores["confusion"] == {"a": {"a": 1, "b": 1}, "b": {"b": 2}, "c": {"a": 1}}


def test_extraction_metrics_count_fields_and_invalid_json():
    references = ['{"city": "Paris", "date": "friday"}', '{"city": "Rome"}', '{"time": "7pm"}']
    predictions = ['{"city": "Paris", "date": "monday"}', '```json\n{"city": "Rome"}\n```', "seven pm"]
    scores = extraction_metrics(references, predictions)
    assert scores["json_valid_rate"] == pytest.approx(2 / 3)
    assert scores["field_precision"] == pytest.approx(2 / 3)  # 2 right of 3 predicted fields
    assert scores["field_recall"] == pytest.approx(2 / 4)  # of 4 reference fields
    assert scores["exact_record_match"] == pytest.approx(1 / 3)
    assert parse_record("[1, 2]") is None and parse_record('{"a": null}') == {"a": None}


def test_bootstrap_interval_brackets_the_metric_and_narrows_with_more_rows():
    accuracy = lambda refs, preds: sum(r == p for r, p in zip(refs, preds)) / len(refs)
    small = bootstrap_interval(["a"] * 8 + ["b"] * 2, ["a"] * 10, accuracy, resamples=500)
    large = bootstrap_interval(["a"] * 800 + ["b"] * 200, ["a"] * 1000, accuracy, resamples=500)
    assert small[0] < 0.8 < small[1] and large[0] < 0.8 < large[1]
    assert large[1] - large[0] < (small[1] - small[0]) / 3
    assert bootstrap_interval(["a"] * 5, ["a"] * 5, accuracy) == (1.0, 1.0)
