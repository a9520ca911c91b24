"""The held-out comparison: base, fine-tuned and champion model against the frontier's answers.

Every model answers every test row, batched, under the adapter's decoding policy (a label set, a JSON object, or
free text), whatever its kind (``serving.students``: a generative student decodes, an encoder student answers in one
forward pass; a classifier or span tagger has no base row: its untrained head answers at random). Answers are scored with the task's metrics,
the headline metric gets a bootstrap 95% interval, and the gate (``distillery.evaluation.gate``)
decides whether the fine-tuned model may replace the champion. The fine-tuned model is then
answered once more the way the model server answers it, through the serving engine under
concurrent callers: its requests/s and per-request latency are what the small model is priced
from, and its answers must equal the evaluated ones. Costs are attached by the caller, which
knows the logged traffic.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from datasets import Dataset

from distillery.evaluation.costs import CostComparison, blended_usd_per_1k, percentile
from distillery.evaluation.cascade import Calibration, check, choose, too_few_rows
from distillery.evaluation.gate import ChampionComparison, GateDecision, GatePolicy, decide
from distillery.evaluation.judge import JudgeResult
from distillery.evaluation.metrics import (EXTRACTION_SCORING, TOOL_CALL_SCORING, bootstrap_interval,
                                           classification_metrics, extraction_metrics, field_f1, free_text_metrics,
                                           per_field_f1, record_match, tool_call_metrics)
from distillery.serving import Generation, LoadResult, Student
from distillery.grounding import message_text, unsupported_values
from distillery.tasks import (CLASSIFICATION, EXTRACTION, FREE_TEXT, TOOL_CALL, Cascade, DecodingPolicy, agrees,
                             confidence_measures, parse_record)

BASE, CANDIDATE, CHAMPION = "base", "fine-tuned", "champion"
HEADLINE = {CLASSIFICATION: "accuracy", EXTRACTION: "field_f1", FREE_TEXT: "embedding_similarity",
            TOOL_CALL: "field_f1"}

# requests, frontier answers, fine-tuned answers -> the judge's verdicts
Judge = Callable[[list[list[dict]], list[str], list[str]], JudgeResult]


@dataclass
class ModelScore:
    name: str
    headline: float  # the task's headline metric against the frontier's answers
    headline_ci95: tuple[float, float]  # bootstrap over the test rows
    agreement: float  # exact match after normalize_answer, on every task
    metrics: dict[str, float]  # the task's metrics
    rows_per_s: float  # evaluation's batches (a batch's time is not a request's latency: see ServingFigures)
    completion_tokens_mean: float


@dataclass
class ServingFigures:
    """The fine-tuned model through the serving engine, ``concurrency`` callers each waiting for its answer."""

    concurrency: int
    rows: int
    requests_per_s: float
    latency_ms_p50: float  # per request, queueing included
    latency_ms_p95: float
    answers_match_eval: float  # share of rows whose served answer equals the evaluated answer
    differences: list[dict] = field(default_factory=list)  # the rows where they differ


@dataclass
class EvalReport:
    workload: str
    task: str
    rows: int
    scores: dict[str, ModelScore]
    gate: GateDecision
    calibration: Calibration | None = None
    champion_version: str | None = None
    examples: list[dict] = field(default_factory=list)  # worst rows of the fine-tuned model first
    # Classification: metrics.classification_metrics per model (per-label F1, confusion).
    classification: dict[str, dict] = field(default_factory=dict)
    # Extraction: F1 per leaf field per model, the lowest first (metrics.per_field_f1).
    fields: dict[str, dict[str, float]] = field(default_factory=dict)
    judge: JudgeResult | None = None
    operations: CostComparison | None = None
    serving: ServingFigures | None = None
    decoding: str = "free"  # the decoding policy's kind: labels, json or free
    # The candidate students, chosen among on the validation split (``selection.StudentFigures.as_dict``, their test
    # figures filled in for the report), and a pair of them measured as one (``selection.pair_figures``)
    students: list[dict] = field(default_factory=list)
    pair: dict | None = None

    @property
    def headline_metric(self) -> str:
        return HEADLINE[self.task]

    @property
    def scoring(self) -> str:
        """How answers are scored against the frontier's (extraction: which fields count)."""
        if self.task == EXTRACTION:
            return EXTRACTION_SCORING
        if self.task == TOOL_CALL:
            return TOOL_CALL_SCORING
        return {CLASSIFICATION: "exact label", FREE_TEXT: "sentence-embedding cosine, ROUGE-L, chrF"}[self.task]

    @property
    def candidate(self) -> ModelScore:
        return self.scores[CANDIDATE]

    @property
    def passed(self) -> bool:
        return self.gate.promote

    @property
    def verdict(self) -> str:
        return self.gate.summary

    @property
    def cascade(self) -> Cascade | None:
        """The cascade the gate promoted the model in; None in full mode or when refused."""
        return Cascade.from_record(self.gate.cascade)

    def as_dict(self) -> dict:
        data = asdict(self)
        data.update(gate=self.gate.as_dict(), calibration=self.calibration.as_dict() if self.calibration else None,
                    judge=self.judge.as_dict() if self.judge else None,
                    operations=self.operations.as_dict() if self.operations else None,
                    headline_metric=self.headline_metric, scoring=self.scoring, passed=self.passed,
                    verdict=self.verdict)
        return data

    def markdown(self) -> str:
        metric = self.headline_metric
        lines = [
            f"Held-out test split of `{self.workload}` ({self.task}): {self.rows} rows, each model's answers scored "
            f"against the frontier's. Headline metric: **{metric}** (the frontier scores 1.000 on its own answers).",
            "",
            f"Every model decoded under the adapter's decoding policy ({self.decoding}). Scoring: {self.scoring}.",
            "",
            f"| model | {metric} | 95% interval | exact agreement | rows/s (evaluation batches) |",
            "|---|---:|---:|---:|---:|",
        ]
        for score in self.scores.values():
            low, high = score.headline_ci95
            name = f"{score.name} (v{self.champion_version})" if score.name == CHAMPION else score.name
            lines.append(f"| {name} | {score.headline:.3f} | {low:.3f}-{high:.3f} | {score.agreement:.1%} | "
                         f"{score.rows_per_s:.1f} |")
        lines += ["", f"**Gate: {self.gate.verdict}**", ""]
        lines += [f"- {reason}" for reason in self.gate.reasons] + [""]
        if self.students:
            lines += _students_markdown(self.students, self.pair, metric)
        if self.calibration:
            lines += _cascade_markdown(self.calibration, self.operations)
        names = list(self.candidate.metrics)
        lines += ["| model | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        lines += [f"| {s.name} | " + " | ".join(f"{s.metrics[n]:.3f}" for n in names) + " |"
                  for s in self.scores.values()]
        lines.append("")
        if self.serving:
            served = self.serving
            lines += [f"Served as the model server serves it (the serving engine, {served.concurrency} concurrent "
                      f"callers, {served.rows} held-out rows): {served.requests_per_s:.2f} requests/s, latency per "
                      f"request p50 {served.latency_ms_p50:.0f} ms, p95 {served.latency_ms_p95:.0f} ms; served answers "
                      f"equal the evaluated ones on {served.answers_match_eval:.1%} of the rows.", ""]
        if self.operations:
            lines += _operations_markdown(self.operations)
        if self.judge:
            j = self.judge
            lines += [f"Pairwise judge `{j.model}` (each row judged in both answer orders), fine-tuned against "
                      f"frontier: {j.wins} wins, {j.ties} ties, {j.losses} losses of {j.judged} rows "
                      f"({j.unjudged} unjudged); win-or-tie rate {j.win_or_tie_rate:.1%}.", ""]
        if self.classification:
            worst = sorted(self.classification[CANDIDATE]["per_label_f1"].items(), key=lambda item: item[1])[:10]
            lines += ["Fine-tuned model, lowest per-label F1:", "", "| label | F1 |", "|---|---:|"]
            lines += [f"| {label} | {f1:.2f} |" for label, f1 in worst] + [""]
        if self.fields:
            shown = [name for name in (BASE, CANDIDATE, CHAMPION) if name in self.fields]
            lines += ["Per-field F1, the fine-tuned model's lowest first:", "",
                      "| field | " + " | ".join(shown) + " |", "|---|" + "---:|" * len(shown)]
            lines += [f"| `{path}` | " + " | ".join(f"{self.fields[name].get(path, 0.0):.2f}" for name in shown) + " |"
                      for path in self.fields[CANDIDATE]] + [""]
        if self.examples:
            shown = [name for name in (BASE, CANDIDATE, CHAMPION) if name in self.scores]
            lines += ["Rows for review, the fine-tuned model's worst first:", "",
                      "| prompt | frontier | " + " | ".join(shown) + " | agrees |", "|---|---|" + "---|" * len(shown) + "---|"]
            for ex in self.examples:
                cells = [ex["prompt"], ex["frontier"], *(ex[name] for name in shown), "yes" if ex["agrees"] else "**no**"]
                lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        return "\n".join(lines)


def _students_markdown(students: list[dict], pair: dict | None, metric: str) -> list[str]:
    """The candidate students side by side: chosen on the validation split, shown on the test split too."""
    def money(value) -> str:
        return f"${value:.4f}" if value is not None else "-"

    lines = ["Candidate students, chosen on the validation split (the cheapest whose gate mode would pass there); "
             "their test figures are shown, never chosen on:", "",
             f"| student | kind | base | validation {metric} | mode | coverage | served rps | $ per 1k (blended) | "
             f"test {metric} | test coverage | chosen |",
             "|---|---|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for s in students:
        if s["status"] != "trained":
            lines.append(f"| {s['name']} | {s['kind']} | {s['base_model']} | - | - | - | - | - | - | - | "
                         f"{_cell(s['status'])} |")
            continue
        coverage = (s.get("cascade") or {}).get("coverage", 1.0) if s["mode"] == "cascade" else 1.0
        test = s.get("test") or {}
        test_headline = f"{test['headline']:.3f}" if "headline" in test else "-"
        test_coverage = f"{test['coverage']:.1%}" if "coverage" in test else "-"
        mark = ("**yes**: " if s["chosen"] else "no: ") + _cell(s["reason"])
        lines.append(f"| {s['name']} | {s['kind']} | {s['base_model']} | {s['headline']:.3f} | {s['mode']} | "
                     f"{coverage:.1%} | {s['requests_per_s'] or 0:.1f} | {money(s['blended_usd_per_1k'])} | "
                     f"{test_headline} | {test_coverage} | {mark} |")
    if pair:
        lines += ["", f"The pair {pair['name']} (a call covered only when both answer the same, each at or above its "
                  f"own threshold) covers {pair['coverage']:.1%} of the validation rows at "
                  f"{(pair['covered_agreement'] or 0):.1%} agreement (lower bound {pair['covered_agreement_low']:.1%}"
                  f"{', within' if pair['holds_the_margin'] else ', outside'} the margin), "
                  f"{money(pair['blended_usd_per_1k'])} per 1k blended; reported, not served (the gateway answers "
                  "with one student)."]
    return lines + [""]


def _cascade_markdown(calibration: Calibration, ops: CostComparison | None) -> list[str]:
    lines = [f"Cascade, calibrated on the validation split: {calibration.note}."]
    test = calibration.test
    if test:
        low, high = test.covered_agreement_ci95
        lines[0] += (f" On the test split, which the choice never saw: coverage {test.coverage:.1%} "
                     f"({test.covered_rows} rows), agreement on the covered rows {test.covered_agreement:.1%} (95% "
                     f"interval {low:.1%}-{high:.1%}), blended agreement {test.blended_agreement:.1%}")
        if ops and ops.frontier.usd_per_1k_requests is not None and ops.small_model.usd_per_1k_requests is not None:
            blended = blended_usd_per_1k(test.coverage, ops.small_model.usd_per_1k_requests,
                                         ops.frontier.usd_per_1k_requests)
            lines[0] += f", blended cost ${blended:.4f} per 1k requests"
        lines[0] += "."
    return lines + [""]


def _operations_markdown(ops: CostComparison) -> list[str]:
    def number(value: float | None, pattern: str) -> str:
        return "n/a" if value is None else pattern.format(value)

    lines = ["| side | latency p50 (ms) | latency p95 (ms) | prompt tokens | answer tokens | $ per 1k requests | basis |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for side in (ops.frontier, ops.small_model):
        lines.append(f"| {side.name} | {number(side.latency_ms_p50, '{:.0f}')} | {number(side.latency_ms_p95, '{:.0f}')} | "
                     f"{number(side.prompt_tokens_per_request, '{:.1f}')} | "
                     f"{number(side.completion_tokens_per_request, '{:.1f}')} | "
                     f"{number(side.usd_per_1k_requests, '{:.4f}')} | {side.basis} |")
    saving, payback = ops.monthly_saving_usd, ops.payback_months
    if ops.coverage < 1 and ops.blended_usd_per_1k is not None:
        lines += ["", f"In the cascade the small model answers {ops.coverage:.1%} of the calls alone and every call "
                  f"costs ${ops.blended_usd_per_1k:.4f} per 1k requests (blended); the saving below is at that cost."]
    lines += ["", f"Volume {ops.requests_per_month:,.0f} requests/month ({ops.volume_basis}): projected saving "
              f"{number(saving, '${:,.2f}')} per month; payback of the ${ops.migration_cost_usd:,.0f} migration "
              + (f"in {payback:.1f} months." if payback is not None else "never (no saving)."), ""]
    return lines


def _cell(text: str, limit: int = 80) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


# The statistic that makes the headline metric of any subset of a model's per-row headline items (``headline_rows``):
# what a bootstrap, plain or paired, resamples.
HEADLINE_STATISTIC: dict[str, Callable[[Sequence], float]] = {
    CLASSIFICATION: statistics.fmean, EXTRACTION: field_f1, TOOL_CALL: field_f1, FREE_TEXT: statistics.fmean}


def headline_rows(task: str, references: Sequence[str], answers: Sequence[str]) -> list:
    """Per-row items of the headline metric: agreement (classification), record matches (JSON), embedding
    similarity (free text)."""
    if task == CLASSIFICATION:
        return [float(agrees(a, r)) for a, r in zip(answers, references)]
    if task in (EXTRACTION, TOOL_CALL):
        return [record_match(r, a) for r, a in zip(references, answers)]
    if task == FREE_TEXT:
        from distillery.evaluation.embeddings import cosine_similarities

        return cosine_similarities(answers, references)
    raise ValueError(f"unknown task {task!r}: expected one of {sorted(HEADLINE)}")


def score_answers(task: str, references: Sequence[str], answers: Sequence[str]) -> tuple[
        float, tuple[float, float], dict[str, float], list[float], list]:
    """The headline metric, its 95% interval, the task's metrics, a per-row score (for picking review rows), and the
    per-row headline items (``headline_rows``)."""
    items = headline_rows(task, references, answers)
    statistic = HEADLINE_STATISTIC[task]
    headline, ci95 = statistic(items), bootstrap_interval(items, statistic)
    if task == CLASSIFICATION:
        return headline, ci95, {"accuracy": headline,
                                "macro_f1": classification_metrics(references, answers)["macro_f1"]}, items, items
    if task in (EXTRACTION, TOOL_CALL):
        rows = [float(m.exact) + (m.true_positive / m.expected if m.expected else 0.0) for m in items]
        metrics = (extraction_metrics if task == EXTRACTION else tool_call_metrics)(references, answers)
        metrics.pop("per_field_f1", None)  # a table of its own (EvalReport.fields)
        return headline, ci95, metrics, rows, items
    return headline, ci95, free_text_metrics(references, answers, items), items, items


def paired_comparison(task: str, challenger: Sequence, champion: Sequence, champion_version: str) -> ChampionComparison:
    """The challenger's headline minus the champion's, from both models' per-row headline items on the same rows,
    with a paired bootstrap 95% interval (each resample draws rows, and both models are scored on the same draw)."""
    statistic = HEADLINE_STATISTIC[task]

    def difference(pairs: Sequence[tuple]) -> float:
        return statistic([a for a, _ in pairs]) - statistic([b for _, b in pairs])

    pairs = list(zip(challenger, champion))
    return ChampionComparison(champion_version, statistic(champion), difference(pairs),
                              bootstrap_interval(pairs, difference))


def row_agreement(task: str, references: Sequence[str], answers: Sequence[str],
                  headline_items: list | None = None) -> list[float]:
    """Each row's agreement with the frontier, in [0, 1], for the cascade: exact agreement (as values, for JSON), or
    for free text the answers' embedding similarity. Where the answers' headline items are known and are that
    agreement already (classification, free text), they are reused."""
    if task in (CLASSIFICATION, FREE_TEXT):
        return headline_items if headline_items is not None else headline_rows(task, references, answers)
    return [float(agrees(a, r)) for a, r in zip(answers, references)]


def _score(name: str, task: str, generations: list[Generation], references: list[str],
           seconds: float) -> tuple[ModelScore, list[float], list]:
    answers = [g.text for g in generations]
    headline, ci95, metrics, rows, items = score_answers(task, references, answers)
    score = ModelScore(
        name=name, headline=headline, headline_ci95=ci95,
        agreement=statistics.fmean(agrees(a, r) for a, r in zip(answers, references)),
        metrics=metrics,
        rows_per_s=len(references) / seconds if seconds else 0.0,
        completion_tokens_mean=statistics.fmean(g.completion_tokens for g in generations),
    )
    return score, rows, items


@dataclass
class Outputs:
    """What each model answered, kept for the operational figures."""

    conversations: list[list[dict]]
    references: list[str]
    reference_tokens: list[int]  # the frontier's answers counted with the small model's tokenizer
    generations: dict[str, list[Generation]]
    served: LoadResult  # the fine-tuned model through the serving engine


def serving_figures(served: LoadResult, evaluated: list[Generation], conversations: list[list[dict]],
                    concurrency: int) -> ServingFigures:
    latencies = [g.latency_ms for g in served.generations]
    differences = [{"row": i, "prompt": conversations[i][-1]["content"][:200], "evaluated": e.text, "served": s.text}
                   for i, (e, s) in enumerate(zip(evaluated, served.generations)) if e.text != s.text]
    rows = len(served.generations)
    return ServingFigures(concurrency, rows, served.requests_per_s, percentile(latencies, 50) or 0.0,
                          percentile(latencies, 95) or 0.0, (rows - len(differences)) / rows if rows else 1.0,
                          differences)


def evaluate(
    test: Dataset,
    validation: Dataset | None,
    workload: str,
    students: dict[str, Student],
    *,
    task: str,
    policy: GatePolicy = GatePolicy(),
    champion_version: str | None = None,
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    examples: int = 8,
    on_progress: Callable[[str], None] | None = None,
    decoding: DecodingPolicy = DecodingPolicy(),
    serving_concurrency: int = 16,
    judge: Judge | None = None,
) -> tuple[EvalReport, Outputs]:
    """Answer every test row with each of ``students`` (``CANDIDATE``, and ``BASE`` and ``CHAMPION`` when given: the
    champion is model version ``champion_version``), each under ``decoding``; calibrate the candidate's cascade on the
    ``validation`` rows and check it on the test rows; score them and apply the gate; then answer the rows again with
    the candidate through the serving engine from ``serving_concurrency`` concurrent callers.
    """
    if len(test) == 0:
        raise ValueError(f"workload {workload!r}: the test split is empty")
    conversations = [row["messages"][:-1] for row in test]
    references = [row["messages"][-1]["content"] for row in test]
    candidate_student = students[CANDIDATE]
    tokenizer = candidate_student.tokenizer
    reference_tokens = [len(ids) for ids in tokenizer(references, add_special_tokens=False)["input_ids"]]
    if max_new_tokens is None:
        max_new_tokens = min(max(reference_tokens) + 8, 256)

    outputs: dict[str, list[Generation]] = {}
    scores: dict[str, ModelScore] = {}
    row_scores: dict[str, list[float]] = {}
    headline_items: dict[str, list] = {}
    for name in [name for name in (BASE, CANDIDATE, CHAMPION) if name in students]:
        if on_progress:
            on_progress(f"answering {len(conversations)} rows with the {name} model ({students[name].kind})")
        started = time.perf_counter()
        outputs[name] = students[name].answer(conversations, policy=decoding, max_new_tokens=max_new_tokens,
                                              batch_size=batch_size)
        scores[name], row_scores[name], headline_items[name] = _score(name, task, outputs[name], references,
                                                                      time.perf_counter() - started)
        if task == EXTRACTION:  # values not found in the prompt: what the hallucination monitor watches live
            missing, values = map(sum, zip(*(unsupported_values(parse_record(g.text), message_text(c)) for g, c in
                                             zip(outputs[name], conversations))))
            scores[name].metrics["unsupported_value_rate"] = missing / values if values else 0.0
    test_agreement = row_agreement(task, references, [g.text for g in outputs[CANDIDATE]], headline_items[CANDIDATE])
    calibration = _calibrate(candidate_student, task, validation, outputs[CANDIDATE], test_agreement, decoding, policy,
                             max_new_tokens, batch_size, on_progress)
    if on_progress:
        on_progress(f"serving the {len(conversations)} rows to {serving_concurrency} concurrent callers, "
                    "as the model server answers them")
    served = candidate_student.serve(conversations, concurrency=serving_concurrency, policy=decoding,
                                     max_new_tokens=max_new_tokens, batch_size=batch_size)

    candidate = scores[CANDIDATE]
    versus = (paired_comparison(task, headline_items[CANDIDATE], headline_items[CHAMPION], champion_version)
              if CHAMPION in students else None)
    gate = decide(HEADLINE[task], len(references), candidate.headline_ci95, calibration, versus, policy)

    shown = sorted(range(len(references)), key=lambda i: row_scores[CANDIDATE][i])[:examples]
    samples = [{"prompt": conversations[i][-1]["content"], "frontier": references[i],
                **{name: outputs[name][i].text for name in outputs},
                "agrees": agrees(outputs[CANDIDATE][i].text, references[i])} for i in shown]
    classification = ({name: classification_metrics(references, [g.text for g in generations])
                       for name, generations in outputs.items()} if task == CLASSIFICATION else {})
    fields = ({name: per_field_f1(references, [g.text for g in generations]) for name, generations in outputs.items()}
              if task == EXTRACTION else {})
    verdicts = None
    if judge:
        if on_progress:
            on_progress("asking the judge to compare the fine-tuned and frontier answers")
        verdicts = judge(conversations, references, [g.text for g in outputs[CANDIDATE]])
    report = EvalReport(workload=workload, task=task, rows=len(references), scores=scores, gate=gate,
                        calibration=calibration, champion_version=champion_version if CHAMPION in students else None,
                        examples=samples,
                        classification=classification, fields=fields, judge=verdicts,
                        decoding=decoding.kind + (f", grounded: {', '.join(decoding.copied_fields)} copy the user's "
                                                  "text" if decoding.copied_fields else ""),
                        serving=serving_figures(served, outputs[CANDIDATE], conversations, serving_concurrency))
    return report, Outputs(conversations, references, reference_tokens, outputs, served)


def _calibrate(student: Student, task: str, validation: Dataset | None, test_answers: list[Generation],
               test_agreement: list[float], decoding: DecodingPolicy, policy: GatePolicy, max_new_tokens: int,
               batch_size: int, on_progress: Callable[[str], None] | None) -> Calibration:
    """Choose the cascade's threshold on the validation rows (the fine-tuned model's answers and confidences), then
    measure it on the test rows (their agreement with the frontier: ``test_agreement``)."""
    rows = validation if validation is not None else []
    measures = confidence_measures(decoding)
    if len(rows) < policy.min_calibration_rows:  # not worth generating: nothing would be chosen from them
        calibration = too_few_rows(len(rows), max_gap=policy.max_gap_to_frontier, min_rows=policy.min_calibration_rows)
    else:
        if on_progress:
            on_progress(f"calibrating the cascade on {len(rows)} validation rows")
        answers = student.answer([row["messages"][:-1] for row in rows], policy=decoding,
                                 max_new_tokens=max_new_tokens, batch_size=batch_size)
        agreement = row_agreement(task, [row["messages"][-1]["content"] for row in rows], [g.text for g in answers])
        calibration = choose({measure: [g.confidence(measure) for g in answers] for measure in measures}, agreement,
                             max_gap=policy.max_gap_to_frontier, min_rows=policy.min_calibration_rows)
    measure = calibration.cascade.measure if calibration.cascade else measures[0]
    return check(calibration, [g.confidence(measure) for g in test_answers], test_agreement)
