import pytest
from datasets import Dataset

from distillery.evaluation import EvalReport, ModelScore, evaluate, normalize_answer


@pytest.mark.parametrize("raw, expected", [(" Billing.", "billing"), ('"shipping"', "shipping"),
                                           ("Tech  support\n", "tech support")])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def _report(agreement: float, threshold: float) -> EvalReport:
    scores = {name: ModelScore(name, a, (a - 0.05, a + 0.05), 10.0, 12.0, 5.0)
              for name, a in (("base", 0.1), ("fine-tuned", agreement))}
    return EvalReport(workload="triage", rows=10, threshold=threshold, scores=scores)


@pytest.mark.parametrize("agreement, threshold, passed", [(0.7, 0.6, True), (0.6, 0.6, True), (0.59, 0.6, False)])
def test_gate_passes_at_or_above_the_threshold(agreement, threshold, passed):
    report = _report(agreement, threshold)
    assert report.passed is passed
    assert report.verdict.startswith("PASS" if passed else "FAIL")
    assert report.as_dict()["passed"] is passed


def test_evaluate_scores_base_and_adapter_against_the_frontier(tiny_model_dir, tiny_adapter_dir):
    rows = [{"log_id": i, "messages": [{"role": "user", "content": f"ticket {i}"},
                                       {"role": "assistant", "content": ["billing", "shipping"][i % 2]}]}
            for i in range(6)]
    report = evaluate(Dataset.from_list(rows), "triage", tiny_model_dir, tiny_adapter_dir, threshold=0.0,
                      batch_size=4)
    assert report.rows == 6 and set(report.scores) == {"base", "fine-tuned"}
    assert report.scores["base"].agreement == 0.0
    # The adapter was trained on these prompts: its answers open with a label, the base model's never do.
    assert all(ex["fine-tuned"].startswith(("billing", "shipping")) for ex in report.examples)
    assert not any(ex["base"].startswith(("billing", "shipping")) for ex in report.examples)
    agrees = [ex["agrees"] for ex in report.examples]
    assert agrees == sorted(agrees)  # disagreements with the frontier are listed first, for review
    assert report.candidate.latency_ms_p50 > 0
    low, high = report.candidate.agreement_ci95
    assert low <= report.candidate.agreement <= high
    markdown = report.markdown()
    assert "| fine-tuned |" in markdown and "PASS" in markdown and "ticket 0" in markdown


def test_constrained_decoding_answers_only_with_a_label(tiny_model_dir, tiny_adapter_dir):
    rows = [{"log_id": i, "messages": [{"role": "user", "content": f"ticket {i}"},
                                       {"role": "assistant", "content": ["billing", "shipping"][i % 2]}]}
            for i in range(6)]
    report = evaluate(Dataset.from_list(rows), "triage", tiny_model_dir, tiny_adapter_dir, threshold=0.0,
                      batch_size=4, answers=["billing", "shipping", "refund request"])
    # Even the untrained base model, which otherwise never says a label, now says exactly one.
    assert all(ex[name] in ("billing", "shipping", "refund request") for ex in report.examples
               for name in ("base", "fine-tuned"))
    fine_tuned = report.classification["fine-tuned"]
    assert fine_tuned["accuracy"] == pytest.approx(report.candidate.agreement)
    assert sum(sum(row.values()) for row in fine_tuned["confusion"].values()) == 6
    assert "macro-F1" in report.markdown() and "lowest per-label F1" in report.markdown()


def test_report_plots_are_pngs(tmp_path):
    from distillery.plots import confusion_matrix_png, per_label_f1_png

    confusion = {"billing": {"billing": 3, "shipping": 1}, "shipping": {"shipping": 2, "other": 1}}
    for path in (confusion_matrix_png(confusion, tmp_path / "c.png"),
                 per_label_f1_png({"billing": 0.8, "shipping": 0.5}, tmp_path / "f.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000
