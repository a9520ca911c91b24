import pytest
from datasets import Dataset

from distillery.evaluation import (ChampionComparison, CostComparison, EvalReport, GatePolicy, ModelScore,
                                   SideFigures, check, choose, decide, evaluate, interval95)
from distillery.serving import load_students
from distillery.tasks import DecodingPolicy, normalize_answer


@pytest.mark.parametrize("raw, expected", [(" Billing.", "billing"), ('"shipping"', "shipping"),
                                           ("Tech  support\n", "tech support")])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def _decide(ci95: tuple[float, float], champion: tuple[float, tuple[float, float]] | None = None, gap: float = 0.05,
            rows: int = 300, calibration=None, **policy):
    versus = ChampionComparison("3", 0.9, champion[0], champion[1]) if champion is not None else None
    return decide("accuracy", rows, ci95, calibration, versus, GatePolicy(max_gap_to_frontier=gap, **policy))


@pytest.mark.parametrize("low, promote", [(0.96, True), (0.95, True), (0.949, False), (0.5, False)])
def test_gate_judges_the_lower_bound_not_the_point_estimate(low, promote):
    decision = _decide((low, 1.0))
    assert decision.promote is promote and decision.mode == ("full" if promote else "refused")
    assert decision.reasons[0].startswith(f"full: accuracy's lower 95% bound {low:.3f} is {100 * (1 - low):.1f} "
                                          "points below the frontier")
    assert decision.summary.startswith("PROMOTE (full)" if promote else "REFUSE")


@pytest.mark.parametrize("gap, promote", [(0.20, True), (0.19, False)])
def test_gate_margin_is_configurable(gap, promote):
    assert _decide((0.805, 0.84), gap=gap).promote is promote


def test_too_few_test_rows_are_not_enough_evidence_whatever_they_score():
    """The demo of an earlier version promoted on 35 rows whose interval was 85.7-100%."""
    decision = _decide((0.857, 1.0), rows=35, gap=0.20)
    assert not decision.promote and decision.mode == "not enough evidence"
    assert decision.summary.startswith("NOT ENOUGH EVIDENCE: 35 test rows are under the minimum of 200")
    lowered = _decide((0.857, 1.0), rows=35, gap=0.20, min_test_rows=30)
    assert lowered.promote and any("minimum lowered to 30 (default 200)" in reason for reason in lowered.reasons)


@pytest.mark.parametrize("difference_ci95, promote", [
    ((-0.012, 0.018), False),  # noise either way: the champion stays
    ((0.001, 0.03), True),  # better beyond noise
    ((-0.05, -0.01), False),  # worse
])
def test_challenger_replaces_the_champion_only_when_better_on_the_same_rows(difference_ci95, promote):
    decision = _decide((0.97, 0.99), champion=(sum(difference_ci95) / 2, difference_ci95))
    assert decision.promote is promote
    assert "champion v3 scores 0.900" in decision.summary and "paired 95% interval" in decision.summary
    assert ("no evidence that it is better, the champion stays" in decision.summary) is (
        difference_ci95[0] <= 0 < difference_ci95[1])
    assert ("worse beyond noise, the champion stays" in decision.summary) is (difference_ci95[1] < 0)


def test_a_challenger_not_worse_beyond_noise_may_replace_the_champion_when_asked():
    assert _decide((0.97, 0.99), champion=(0.003, (-0.012, 0.018)), require_gain_over_champion=False).promote
    assert not _decide((0.97, 0.99), champion=(-0.03, (-0.05, -0.01)), require_gain_over_champion=False).promote


def _calibrated(covered_agreement: list[float], escalated: int, gap: float = 0.05, validation_rows: int = 400):
    """A calibration whose validation rows are all confident and right (so a threshold is chosen at 0.9), checked on
    test rows: the covered ones at 0.95 confidence with the given agreement, the escalated ones at 0.2."""
    chosen = choose({"label_probability": [0.95] * validation_rows}, [1.0] * validation_rows, max_gap=gap,
                    min_rows=100)
    confidences = [0.95] * len(covered_agreement) + [0.2] * escalated
    return check(chosen, confidences, covered_agreement + [0.0] * escalated)


def test_a_model_that_fails_in_full_passes_as_a_cascade_on_the_share_it_is_sure_of():
    calibration = _calibrated([1.0] * 180 + [0.0] * 1, escalated=119)
    decision = _decide((0.55, 0.66), calibration=calibration)
    assert decision.promote and decision.mode == "cascade"
    assert decision.cascade == {"threshold": 0.95, "measure": "label_probability", "coverage": pytest.approx(181 / 300)}
    assert decision.summary.startswith("PROMOTE (cascade at threshold 0.95, 60.3% coverage)")
    assert calibration.test.blended_agreement == pytest.approx(299 / 300)
    # the covered share's lower bound, not its point estimate, must hold the margin
    weak = _calibrated([1.0] * 18 + [0.0] * 1, escalated=281)
    assert not _decide((0.55, 0.66), calibration=weak).promote


def test_calibration_picks_the_threshold_that_covers_most_within_the_bound_and_says_when_it_cannot():
    confidences = [0.99] * 300 + [0.8] * 100 + [0.5] * 100
    agreement = [1.0] * 300 + [1.0] * 95 + [0.0] * 5 + [0.0] * 100
    chosen = choose({"sequence_probability": confidences, "lowest_token_probability": [0.99] * 300 + [0.1] * 200},
                    agreement, max_gap=0.05, min_rows=100)
    assert chosen.cascade.threshold == 0.8 and chosen.cascade.measure == "sequence_probability"
    assert [round(p.coverage, 2) for p in chosen.validation_curve] == [0.6, 0.8, 1.0]
    assert "covers 80.0% of 500 validation rows" in chosen.note
    assert choose({"label_probability": confidences}, agreement, max_gap=0.05, min_rows=1000).cascade is None
    nothing = choose({"label_probability": [0.9] * 200}, [0.0] * 200, max_gap=0.05, min_rows=100)
    assert nothing.cascade is None and "no threshold keeps" in nothing.note
    decision = _decide((0.5, 0.6), calibration=check(nothing, [0.9] * 300, [0.0] * 300))
    assert not decision.promote and any("cascade: no threshold keeps" in reason for reason in decision.reasons)


def test_wilson_bound_is_honest_at_full_agreement():
    low, high = interval95([1.0] * 35)
    assert high == 1.0 and low == pytest.approx(0.901, abs=1e-3)  # 35 of 35 right still allows 90%


def _constructed_report(score: float, champion: float | None) -> EvalReport:
    def model(name: str, value: float) -> ModelScore:
        return ModelScore(name, value, (value - 0.01, min(value + 0.01, 1.0)), value, {"accuracy": value,
                          "macro_f1": value - 0.01}, 12.0, 3.0)

    scores = {"base": model("base", 0.12), "fine-tuned": model("fine-tuned", score)}
    if champion is not None:
        scores["champion"] = model("champion", champion)
    gate = _decide(scores["fine-tuned"].headline_ci95, (score - champion, (score - champion - 0.01,
                                                                           score - champion + 0.01))
                   if champion is not None else None)
    frontier = SideFigures("frontier", 800.0, 2100.0, 120.0, 3.0, 0.45, "cost logged by the gateway on 400 requests")
    small = SideFigures("fine-tuned", 40.0, 90.0, 118.0, 3.0, 0.02, "$1/hour serving machine")
    operations = CostComparison(frontier, small, 1_000_000, "configured", 5000.0)
    return EvalReport("triage", "classification", 100, scores, gate, champion_version="3" if champion else None,
                      operations=operations)


def test_a_constructed_report_carries_the_decision_and_the_money():
    passing, refused = _constructed_report(0.96, champion=0.90), _constructed_report(0.96, champion=0.995)
    assert passing.passed and passing.as_dict()["passed"] is True
    assert not refused.passed and refused.as_dict()["gate"]["summary"].startswith("REFUSE")
    ops = passing.operations
    assert ops.monthly_saving_usd == pytest.approx((0.45 - 0.02) * 1000)
    assert ops.payback_months == pytest.approx(5000 / 430)
    markdown = passing.markdown()
    assert "**Gate: PROMOTE (full)**" in markdown and "champion (v3)" in markdown and "| frontier | 800 | 2100 |" in markdown
    assert "payback of the $5,000 migration in 11.6 months" in markdown
    assert "**Gate: REFUSE**" in refused.markdown()


def test_evaluate_scores_base_and_adapter_against_the_frontier(tiny_model_dir, tiny_adapter_dir):
    rows = [{"log_id": i, "messages": [{"role": "user", "content": f"ticket {i}"},
                                       {"role": "assistant", "content": ["billing", "shipping"][i % 2]}]}
            for i in range(6)]
    students = load_students({"fine-tuned": (tiny_adapter_dir, tiny_model_dir)}, base="base")
    report, outputs = evaluate(Dataset.from_list(rows), None, "triage", students, task="free_text",
                               policy=GatePolicy(max_gap_to_frontier=1.0, min_test_rows=6), batch_size=4)
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
    students = load_students({"fine-tuned": (tiny_adapter_dir, tiny_model_dir),
                              "champion": (tiny_adapter_dir, tiny_model_dir)}, base="base")
    report, _ = evaluate(Dataset.from_list(rows), Dataset.from_list(rows * 2), "triage", students,
                         task="classification", batch_size=4,
                         decoding=DecodingPolicy(labels=("billing", "shipping", "refund request")),
                         champion_version="1", policy=GatePolicy(min_test_rows=6, min_calibration_rows=12))
    # Even the untrained base model, which otherwise never says a label, now says exactly one.
    assert all(ex[name] in ("billing", "shipping", "refund request") for ex in report.examples
               for name in ("base", "fine-tuned"))
    fine_tuned = report.classification["fine-tuned"]
    assert fine_tuned["accuracy"] == pytest.approx(report.candidate.headline)
    agrees = [ex["agrees"] for ex in report.examples]
    assert agrees == sorted(agrees)  # disagreements with the frontier are listed first, for review
    # The champion here is the same adapter: same answers, no difference, so it is not replaced by its twin.
    assert report.scores["champion"].headline == report.candidate.headline
    assert any("differs by +0.0 points" in r and "the champion stays" in r for r in report.gate.reasons)
    assert not report.passed
    # calibrated on the 12 validation rows: every answer has a confidence under the label policy
    assert report.calibration.validation_rows == 12 and len(report.calibration.test_curve) >= 1
    assert all(0 < p.coverage <= 1 for p in report.calibration.test_curve)
    assert sum(sum(row.values()) for row in fine_tuned["confusion"].values()) == 6
    assert "| macro_f1 |" in report.markdown() and "lowest per-label F1" in report.markdown()


def test_report_plots_are_pngs(tmp_path):
    from distillery.evaluation import confusion_matrix_png, per_label_f1_png

    confusion = {"billing": {"billing": 3, "shipping": 1}, "shipping": {"shipping": 2, "other": 1}}
    for path in (confusion_matrix_png(confusion, tmp_path / "c.png"),
                 per_label_f1_png({"billing": 0.8, "shipping": 0.5}, tmp_path / "f.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000


class _TableStudent:
    """A student that answers from a table (answer, confidence) and serves at a set rate: the selection's own logic
    on figures known in advance."""

    kind = "classifier"

    def __init__(self, answers: list[tuple[str, float]], requests_per_s: float):
        import math

        from distillery.serving.engine import Generation

        self.generations = [Generation(text, 1, 8, "stop", 0.0, token_ids=[0], token_logprobs=[math.log(p)])
                            for text, p in answers]
        self.requests_per_s = requests_per_s

    def answer(self, conversations, **_):
        return self.generations[:len(conversations)]

    def serve(self, conversations, **_):
        from distillery.serving.engine import LoadResult

        return LoadResult(self.generations[:len(conversations)], len(conversations) / self.requests_per_s)


def test_a_student_that_passes_only_as_a_cascade_is_chosen_in_cascade_mode_at_its_validation_coverage():
    """The selection prices a cascade at the coverage it reaches on the validation rows (a bug once left that coverage
    unset until the test split, so every cascade-only candidate read as refused and none could be the cheapest)."""
    from distillery.evaluation import row_agreement, score_answers
    from distillery.evaluation.selection import StudentFigures, choose_student, measure_student
    from distillery.tasks import LABEL_PROBABILITY

    references = ["billing"] * 400
    sure_but_wrong_sometimes = _TableStudent([("billing", 0.99)] * 360 + [("shipping", 0.5)] * 40, 400.0)
    unsure = _TableStudent([("billing", 0.6)] * 300 + [("shipping", 0.6)] * 100, 40.0)

    def score(answers):
        headline, ci95, _, _, items = score_answers("classification", references, [g.text for g in answers])
        return headline, ci95, row_agreement("classification", references, [g.text for g in answers], items)

    figures = []
    for name, student in (("cascade-only", sure_but_wrong_sometimes), ("refused", unsure)):
        row, _ = measure_student(StudentFigures(name, "classifier", "base", "trained"), student, [[]] * 400, score,
                                 decoding=DecodingPolicy(labels=("billing", "shipping")), gate=GatePolicy(),
                                 usd_per_hour=1.0, frontier_usd_per_1k=0.30, concurrency=16, batch_size=64,
                                 max_new_tokens=8)
        figures.append(row)
    cascade_only, refused = figures
    assert cascade_only.headline == pytest.approx(0.9) and cascade_only.mode == "cascade"
    assert cascade_only.cascade["measure"] == LABEL_PROBABILITY and cascade_only.cascade["coverage"] == 0.9
    small = 1.0 / 3.6 / 400  # $1/hour at 400 requests/s, per 1k
    assert cascade_only.blended_usd_per_1k == pytest.approx(small + 0.1 * 0.30)
    assert refused.mode == "refused" and refused.blended_usd_per_1k is None
    assert choose_student(figures) is cascade_only and "lowest blended cost" in cascade_only.reason
