import pytest
from datasets import Dataset

from distillery.evaluation import (ChampionScore, CostComparison, EvalReport, GatePolicy, ModelScore, SideFigures,
                                   decide, evaluate)
from distillery.tasks import DecodingPolicy, normalize_answer


@pytest.mark.parametrize("raw, expected", [(" Billing.", "billing"), ('"shipping"', "shipping"),
                                           ("Tech  support\n", "tech support")])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def _decide(score: float, ci95: tuple[float, float], champion: float | None = None, gap: float = 0.05):
    return decide("accuracy", score, ci95, ChampionScore("3", champion) if champion is not None else None,
                  GatePolicy(max_gap_to_frontier=gap))


@pytest.mark.parametrize("score, promote", [(0.96, True), (0.95, True), (0.949, False), (0.5, False)])
def test_gate_margin_to_the_frontier_on_both_sides(score, promote):
    decision = _decide(score, (score - 0.02, min(score + 0.02, 1.0)))
    assert decision.promote is promote
    assert decision.reasons[0].startswith(f"accuracy {score:.3f} is {100 * (1 - score):.1f} points below the frontier")
    assert decision.summary.startswith("PROMOTE" if promote else "REFUSE")


@pytest.mark.parametrize("gap, promote", [(0.20, True), (0.19, True), (0.18, False)])
def test_gate_margin_is_configurable(gap, promote):
    assert _decide(0.81, (0.78, 0.84), gap=gap).promote is promote


@pytest.mark.parametrize("champion, promote", [
    (0.96, True),  # champion better, but inside the challenger's interval: noise
    (0.97, True),  # exactly at the interval's top
    (0.971, False),  # above the whole interval: a real drop
    (0.90, True),  # the challenger is better
])
def test_gate_refuses_a_challenger_worse_than_the_champion_beyond_its_interval(champion, promote):
    decision = _decide(0.96, (0.94, 0.97), champion=champion)
    assert decision.promote is promote
    assert ("worse than the champion beyond the interval" in decision.summary) is not promote
    assert "champion v3" in decision.summary


def test_gate_names_every_failed_rule_first():
    decision = _decide(0.80, (0.75, 0.85), champion=0.90)
    assert not decision.promote and len(decision.reasons) == 2
    assert "points below the frontier" in decision.reasons[0] and "worse than the champion" in decision.reasons[1]
    assert _decide(0.99, (0.97, 1.0)).reasons[-1] == "no champion yet"
    with pytest.raises(ValueError, match="between 0 and 1"):
        GatePolicy(max_gap_to_frontier=5)


def _constructed_report(score: float, champion: float | None) -> EvalReport:
    def model(name: str, value: float) -> ModelScore:
        return ModelScore(name, value, (value - 0.03, min(value + 0.03, 1.0)), value, {"accuracy": value,
                          "macro_f1": value - 0.01}, 12.0, 3.0)

    scores = {"base": model("base", 0.12), "fine-tuned": model("fine-tuned", score)}
    if champion is not None:
        scores["champion"] = model("champion", champion)
    gate = _decide(score, scores["fine-tuned"].headline_ci95, champion)
    frontier = SideFigures("frontier", 800.0, 2100.0, 120.0, 3.0, 0.45, "cost logged by the gateway on 400 requests")
    small = SideFigures("fine-tuned", 40.0, 90.0, 118.0, 3.0, 0.02, "$1/hour serving machine")
    operations = CostComparison(frontier, small, 1_000_000, "configured", 5000.0)
    return EvalReport("triage", "classification", 100, scores, gate, champion_version="3" if champion else None,
                      operations=operations)


def test_a_constructed_report_carries_the_decision_and_the_money():
    passing, refused = _constructed_report(0.96, champion=0.95), _constructed_report(0.96, champion=0.995)
    assert passing.passed and passing.as_dict()["passed"] is True
    assert not refused.passed and refused.as_dict()["gate"]["summary"].startswith("REFUSE")
    ops = passing.operations
    assert ops.monthly_saving_usd == pytest.approx((0.45 - 0.02) * 1000)
    assert ops.payback_months == pytest.approx(5000 / 430)
    markdown = passing.markdown()
    assert "**Gate: PROMOTE**" in markdown and "champion (v3)" in markdown and "| frontier | 800 | 2100 |" in markdown
    assert "payback of the $5,000 migration in 11.6 months" in markdown
    assert "**Gate: REFUSE**" in refused.markdown()


def test_evaluate_scores_base_and_adapter_against_the_frontier(tiny_model_dir, tiny_adapter_dir):
    rows = [{"log_id": i, "messages": [{"role": "user", "content": f"ticket {i}"},
                                       {"role": "assistant", "content": ["billing", "shipping"][i % 2]}]}
            for i in range(6)]
    report, outputs = evaluate(Dataset.from_list(rows), "triage", tiny_model_dir, tiny_adapter_dir,
                               task="free_text", policy=GatePolicy(max_gap_to_frontier=1.0), batch_size=4)
    assert report.rows == 6 and set(report.scores) == {"base", "fine-tuned"}
    assert set(report.candidate.metrics) == {"rouge_l", "chrf", "embedding_similarity"}
    assert report.headline_metric == "embedding_similarity" and len(outputs.generations["base"]) == 6
    assert report.scores["base"].agreement == 0.0
    # The adapter was trained on these prompts: its answers open with a label, the base model's never do.
    assert all(ex["fine-tuned"].startswith(("billing", "shipping")) for ex in report.examples)
    assert not any(ex["base"].startswith(("billing", "shipping")) for ex in report.examples)
    served = report.serving  # the fine-tuned model through the serving engine, 16 concurrent callers by default
    assert served.rows == 6 and served.requests_per_s > 0 and 0 < served.latency_ms_p50 <= served.latency_ms_p95
    assert served.answers_match_eval == 1.0 and served.differences == []
    low, high = report.candidate.headline_ci95
    assert low <= report.candidate.headline <= high
    assert report.candidate.headline > report.scores["base"].headline
    markdown = report.markdown()
    assert "| fine-tuned |" in markdown and "PROMOTE" in markdown and "ticket 0" in markdown


def test_constrained_decoding_answers_only_with_a_label(tiny_model_dir, tiny_adapter_dir):
    rows = [{"log_id": i, "messages": [{"role": "user", "content": f"ticket {i}"},
                                       {"role": "assistant", "content": ["billing", "shipping"][i % 2]}]}
            for i in range(6)]
    report, _ = evaluate(Dataset.from_list(rows), "triage", tiny_model_dir, tiny_adapter_dir, task="classification",
                         batch_size=4, decoding=DecodingPolicy(labels=("billing", "shipping", "refund request")),
                         champion=("1", tiny_adapter_dir))
    # Even the untrained base model, which otherwise never says a label, now says exactly one.
    assert all(ex[name] in ("billing", "shipping", "refund request") for ex in report.examples
               for name in ("base", "fine-tuned"))
    fine_tuned = report.classification["fine-tuned"]
    assert fine_tuned["accuracy"] == pytest.approx(report.candidate.headline)
    agrees = [ex["agrees"] for ex in report.examples]
    assert agrees == sorted(agrees)  # disagreements with the frontier are listed first, for review
    # The champion here is the same adapter: same answers, so the champion rule cannot refuse it.
    assert report.scores["champion"].headline == report.candidate.headline
    assert any("not worse beyond the interval" in reason for reason in report.gate.reasons)
    assert sum(sum(row.values()) for row in fine_tuned["confusion"].values()) == 6
    assert "| macro_f1 |" in report.markdown() and "lowest per-label F1" in report.markdown()


def test_report_plots_are_pngs(tmp_path):
    from distillery.evaluation import confusion_matrix_png, per_label_f1_png

    confusion = {"billing": {"billing": 3, "shipping": 1}, "shipping": {"shipping": 2, "other": 1}}
    for path in (confusion_matrix_png(confusion, tmp_path / "c.png"),
                 per_label_f1_png({"billing": 0.8, "shipping": 0.5}, tmp_path / "f.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000
