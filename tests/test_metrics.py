import pytest

from distillery.evaluation import bootstrap_interval, classification_metrics, extraction_metrics, free_text_metrics
from distillery.evaluation.metrics import field_f1, record_match
from distillery.grounding import leaf_fields
from distillery.tasks import parse_record


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


def test_extraction_counts_sum_to_the_corpus_scores():
    references = ['{"city": "Paris", "date": "friday"}', '{"city": "Rome"}']
    predictions = ['{"city": "Paris"}', "not json"]
    matches = [record_match(r, p) for r, p in zip(references, predictions)]
    assert matches[0] == (True, 1, 1, 2, False) and matches[1] == (False, 0, 0, 1, False)
    assert field_f1(matches) == pytest.approx(extraction_metrics(references, predictions)["field_f1"]) == pytest.approx(0.5)


def test_free_text_metrics_reward_closer_answers():
    reference = ["Your refund was sent to the card you paid with and arrives within five days."]
    close = free_text_metrics(reference, ["The refund went to the card you paid with; it arrives in five days."], [0.9])
    far = free_text_metrics(reference, ["Please restart the router."], [0.1])
    assert close["rouge_l"] > far["rouge_l"] and close["chrf"] > far["chrf"]
    assert free_text_metrics(reference, reference, [1.0]) == pytest.approx(
        {"rouge_l": 1.0, "chrf": 1.0, "embedding_similarity": 1.0})


def test_bootstrap_interval_brackets_the_metric_and_narrows_with_more_rows():
    small = bootstrap_interval([1] * 8 + [0] * 2, resamples=500)
    large = bootstrap_interval([1] * 800 + [0] * 200, resamples=500)
    assert small[0] < 0.8 < small[1] and large[0] < 0.8 < large[1]
    assert large[1] - large[0] < (small[1] - small[0]) / 3
    assert bootstrap_interval([1] * 5) == (1.0, 1.0)
    # Any statistic of the rows: here micro field F1 over per-row extraction counts.
    matches = [record_match('{"a": 1}', '{"a": 1}')] * 5 + [record_match('{"a": 1}', "{}")] * 5
    low, high = bootstrap_interval(matches, field_f1, resamples=300)
    assert low < field_f1(matches) < high


def test_extraction_scores_nested_answers_leaf_by_leaf():
    reference = '{"intents": ["book", "pay", "cancel"], "slots": {"city": "Paris", "date": "friday", "time": "7pm", ' \
                '"people": 2}}'
    # 2 of 3 intents and 3 of 4 slots right, one intent and one slot wrong.
    prediction = '{"intents": ["pay", "book", "refund"], "slots": {"city": "Paris", "date": "friday", "time": "7pm", ' \
                 '"people": 3}}'
    match = record_match(reference, prediction)
    assert match == (True, 5, 7, 7, False)
    assert field_f1([match]) == pytest.approx(5 / 7)
    # Lists are multisets: a repeated element counts once per occurrence, order does not matter.
    assert record_match('{"tags": ["a", "a", "b"]}', '{"tags": ["b", "a"]}') == (True, 2, 2, 3, False)
    assert record_match('{"rows": [{"id": 1, "x": "y"}]}', '{"rows": [{"x": "y", "id": 1}]}').exact
    assert leaf_fields({"a": {"b": None, "c": ""}, "d": []}) == {}


def test_the_eval_report_names_the_extraction_scoring():
    from distillery.evaluation.comparison import EvalReport
    from distillery.evaluation.gate import GateDecision

    report = EvalReport("extract", "extraction", 0, {}, GateDecision(False, "field_f1", "refused"))
    assert "leaf fields" in report.scoring
