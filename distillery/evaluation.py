"""The held-out comparison: base and fine-tuned small model against the frontier's answers."""

from __future__ import annotations

import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from datasets import Dataset

from distillery.inference import Generation, generate, load_model, using_adapter
from distillery.metrics import bootstrap_interval, classification_metrics

ADAPTER_NAME = "candidate"


def normalize_answer(text: str) -> str:
    """Exact match ignores case, surrounding whitespace and quotes, and a final period."""
    return re.sub(r"\s+", " ", text).strip().strip("\"'`").rstrip(".").strip().casefold()


@dataclass
class ModelScore:
    name: str
    agreement: float
    agreement_ci95: tuple[float, float]  # bootstrap over the test rows
    latency_ms_p50: float
    latency_ms_mean: float
    rows_per_s: float


@dataclass
class EvalReport:
    workload: str
    rows: int
    threshold: float
    scores: dict[str, ModelScore]
    examples: list[dict] = field(default_factory=list)
    # Classification workloads: distillery.metrics.classification_metrics per model name.
    classification: dict[str, dict] = field(default_factory=dict)

    @property
    def candidate(self) -> ModelScore:
        return self.scores["fine-tuned"]

    @property
    def passed(self) -> bool:
        return self.candidate.agreement >= self.threshold

    @property
    def verdict(self) -> str:
        agreement, threshold = self.candidate.agreement, self.threshold
        if self.passed:
            return f"PASS: fine-tuned agreement {agreement:.1%} >= threshold {threshold:.1%}"
        return f"FAIL: fine-tuned agreement {agreement:.1%} < threshold {threshold:.1%}"

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed, "verdict": self.verdict}

    def markdown(self) -> str:
        lines = [
            f"Held-out test split of `{self.workload}`: {self.rows} rows, answers compared with the frontier's "
            "(exact match after trimming whitespace, quotes, case and a final period).",
            "",
            "| model | agreement with frontier | 95% interval | latency p50 (ms) | latency mean (ms) | rows/s |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for score in self.scores.values():
            low, high = score.agreement_ci95
            lines.append(f"| {score.name} | {score.agreement:.1%} | {low:.1%}-{high:.1%} | {score.latency_ms_p50:.0f} | "
                         f"{score.latency_ms_mean:.0f} | {score.rows_per_s:.1f} |")
        lines += ["", f"**{self.verdict}**", ""]
        if self.classification:
            lines += ["| model | accuracy | macro-F1 |", "|---|---:|---:|"]
            lines += [f"| {name} | {m['accuracy']:.1%} | {m['macro_f1']:.3f} |" for name, m in self.classification.items()]
            worst = sorted(self.classification["fine-tuned"]["per_label_f1"].items(), key=lambda item: item[1])[:10]
            lines += ["", "Fine-tuned model, lowest per-label F1:", "", "| label | F1 |", "|---|---:|"]
            lines += [f"| {label} | {f1:.2f} |" for label, f1 in worst] + [""]
        if self.examples:
            lines += ["Rows for review, the fine-tuned model's disagreements with the frontier first:", "",
                      "| prompt | frontier | base | fine-tuned | agrees |", "|---|---|---|---|---|"]
            for ex in self.examples:
                cells = [ex["prompt"], ex["frontier"], ex["base"], ex["fine-tuned"], "yes" if ex["agrees"] else "**no**"]
                lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        return "\n".join(lines)


def _cell(text: str, limit: int = 80) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def agrees(answer: str, reference: str) -> bool:
    return normalize_answer(answer) == normalize_answer(reference)


def agreement(references: Sequence[str], answers: Sequence[str]) -> float:
    return sum(agrees(a, r) for a, r in zip(answers, references)) / len(references)


def _score(name: str, generations: list[Generation], references: list[str], seconds: float) -> ModelScore:
    answers = [g.text for g in generations]
    latencies = [g.latency_ms for g in generations]
    return ModelScore(
        name=name,
        agreement=agreement(references, answers),
        agreement_ci95=bootstrap_interval(references, answers, agreement),
        latency_ms_p50=statistics.median(latencies),
        latency_ms_mean=statistics.fmean(latencies),
        rows_per_s=len(references) / seconds if seconds else 0.0,
    )


def evaluate(
    test: Dataset,
    workload: str,
    base_model: str,
    adapter_dir: Path,
    *,
    threshold: float,
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    examples: int = 8,
    on_progress: Callable[[str], None] | None = None,
    answers: list[str] | None = None,
) -> EvalReport:
    """Generate with the base model and with the adapter on every test row and score both.

    ``answers`` (a classification label set) constrains both models' decoding to those strings.
    """
    if len(test) == 0:
        raise ValueError(f"workload {workload!r}: the test split is empty")
    conversations = [row["messages"][:-1] for row in test]
    references = [row["messages"][-1]["content"] for row in test]
    model, tokenizer = load_model(base_model, {ADAPTER_NAME: adapter_dir})
    if max_new_tokens is None:
        longest = max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references)
        max_new_tokens = min(longest + 8, 256)

    outputs: dict[str, list[Generation]] = {}
    scores: dict[str, ModelScore] = {}
    for name in ("base", "fine-tuned"):
        if on_progress:
            on_progress(f"generating {len(conversations)} answers with the {name} model")
        started = time.perf_counter()
        with using_adapter(model, None if name == "base" else ADAPTER_NAME):
            outputs[name] = generate(model, tokenizer, conversations, max_new_tokens=max_new_tokens, answers=answers,
                                     batch_size=batch_size)
        scores[name] = _score(name, outputs[name], references, time.perf_counter() - started)

    # For review: the fine-tuned model's disagreements with the frontier first, then agreements.
    matched = [agrees(g.text, r) for g, r in zip(outputs["fine-tuned"], references)]
    shown = sorted(range(len(references)), key=lambda i: matched[i])[:examples]
    samples = [
        {"prompt": conversations[i][-1]["content"], "frontier": references[i],
         "base": outputs["base"][i].text, "fine-tuned": outputs["fine-tuned"][i].text, "agrees": matched[i]}
        for i in shown
    ]
    classification = {name: classification_metrics(references, [g.text for g in generations])
                      for name, generations in outputs.items()} if answers else {}
    return EvalReport(workload=workload, rows=len(references), threshold=threshold, scores=scores, examples=samples,
                      classification=classification)
