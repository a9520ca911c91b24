"""Banking77: fine-tune on train.csv within a time budget, evaluate on test.csv, against a Trainer baseline.

    python benchmarks/banking77.py [--budget-minutes 15] [--base-model PATH] [--quick] [--cascade]

1. Baseline throughput: a plain ``transformers.Trainer`` + peft (the same model, data and
   LoRA settings; batches padded to the longest, full-vocabulary LM loss) for a few steps.
2. Distillery's trainer (distillery/training.py) for ``--budget-minutes`` of training: LoRA
   on the top ``--lora-layers`` layers, length-grouped batches, the LM head applied at the
   answer positions only with the softmax over the label set's tokens.
3. Evaluation on the test rows (all 3,080 by default) with decoding constrained to the 77 labels.
4. ``--cascade``: a calibration split (``--calibration-per-label`` rows of each label, carved from train.csv and never
   trained on) chooses the confidence threshold the way ``eval_report`` does (``distillery.evaluation.cascade``: the
   most coverage whose covered accuracy keeps its lower 95% bound within ``--cascade-margin-points`` of the labels,
   which stand in for the frontier); the test rows then report its coverage, covered accuracy and bound, the blended
   answers' accuracy (escalated rows get the label) and the blended cost per 1,000 requests (covered: the small
   model; escalated: the small model and the frontier at ``--frontier-usd-per-1k``), the small model priced from
   the evaluation's rows/s at ``--serving-usd-per-hour``.

5. ``--students``: instead of the generative student alone, the candidates ``lora_adapter`` trains for a classification
   workload (``distillery.training.students``): the generative student (the settings above) and a classifier on the
   bundled all-MiniLM-L6-v2, trained side by side within the one budget, each given the time left divided among
   those still to train. The calibration rows (``--calibration-per-label``) are the validation split the choice is
   made on, as ``eval_report`` makes it (``distillery.evaluation.selection``: the cheapest blended cost per 1k whose
   gate mode, at ``--cascade-margin-points``, would pass); every candidate, and the pair of them (a call covered when
   both answer the same, each sure of it), is then measured on the test rows. The chosen student is served to 16
   concurrent callers through the serving engine on the test rows: requests/s, and its answers against the evaluated
   ones. A table of the candidates, then the JSON.

The last line is one JSON object. ``--quick`` is a tiny run for CI (seconds of training, 77 test rows).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from datasets import Dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distillery.errors import DistilleryError  # noqa: E402
from distillery.evaluation import blended_usd_per_1k, check, choose, classification_metrics  # noqa: E402
from distillery.models import load_tokenizer, resolve_base_model  # noqa: E402
from distillery.serving import generate, load_model  # noqa: E402
from distillery.settings import public_dataset  # noqa: E402
from distillery.tasks import LABEL_PROBABILITY, DecodingPolicy, agrees  # noqa: E402
from distillery.training import TrainingConfig, train_lora  # noqa: E402
from distillery.training.trainer import build_lora_model, render_example  # noqa: E402

SYSTEM = "Banking intent."


def conversation(text: str, label: str | None = None) -> list[dict]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
    return messages + ([{"role": "assistant", "content": label}] if label is not None else [])


def stratified(frame: pd.DataFrame, per_label: int, seed: int) -> pd.DataFrame:
    return frame.groupby("category").sample(n=per_label, random_state=seed)


def baseline_tokens_per_s(base_model: str, rows: list[dict], config: TrainingConfig, steps: int) -> float:
    """Non-padding tokens per second of a plain Trainer + peft run, timed after its first step."""
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    tokenizer = load_tokenizer(base_model)
    examples = [render_example(tokenizer, row["messages"]) for row in rows[: steps * config.batch_size]]
    dataset = Dataset.from_list([{"input_ids": e.input_ids, "labels": e.labels,
                                  "attention_mask": [1] * len(e.input_ids)} for e in examples])
    model = build_lora_model(base_model, config, "cuda" if torch.cuda.is_available() else "cpu")
    timing = {"tokens": 0, "began": 0.0, "ended": 0.0}

    class Count(DataCollatorForSeq2Seq):
        def __call__(self, features, return_tensors=None):
            batch = super().__call__(features, return_tensors)
            timing["pending"] = int(batch["attention_mask"].sum())
            return batch

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                timing["began"] = time.perf_counter()
            else:
                timing["tokens"] += timing["pending"]
            timing["ended"] = time.perf_counter()

    with tempfile.TemporaryDirectory() as output:
        arguments = TrainingArguments(output_dir=output, per_device_train_batch_size=config.batch_size,
                                      max_steps=steps, learning_rate=config.learning_rate, report_to=[],
                                      save_strategy="no", logging_strategy="no", use_cpu=not torch.cuda.is_available(),
                                      dataloader_num_workers=0, seed=config.seed)
        Trainer(model=model, args=arguments, train_dataset=dataset, callbacks=[Clock()],
                data_collator=Count(tokenizer, padding="longest", label_pad_token_id=-100)).train()
    return timing["tokens"] / (timing["ended"] - timing["began"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-minutes", type=float, default=15.0)
    # More epochs than the budget allows, so the budget decides where training ends (the schedule decays over it);
    # a machine that ran one epoch in 9 of its 15 minutes otherwise stopped there (2026-12-02).
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--base-model", default=None, help="path or id; default: the bundled SmolLM2-135M-Instruct")
    parser.add_argument("--quick", action="store_true", help="a tiny run for CI")
    parser.add_argument("--test-rows", type=int, default=0, help="0: all 3,080")
    parser.add_argument("--lora-layers", type=int, default=8, help="top layers with LoRA; 0: all")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--baseline-steps", type=int, default=6)
    parser.add_argument("--cascade", action="store_true", help="calibrate and report the confidence cascade")
    parser.add_argument("--calibration-per-label", type=int, default=10)
    parser.add_argument("--cascade-margin-points", type=float, default=2.0)
    parser.add_argument("--frontier-usd-per-1k", type=float, default=0.30)
    parser.add_argument("--serving-usd-per-hour", type=float, default=1.0)
    parser.add_argument("--students", action="store_true", help="train and compare the candidate students")
    args = parser.parse_args()
    args.cascade = args.cascade or args.students  # the students are chosen on the calibration rows
    try:
        data = public_dataset("banking77")
    except DistilleryError as exc:
        sys.exit(f"benchmarks/banking77.py: {exc}")
    torch.manual_seed(0)

    base_model = resolve_base_model(args.base_model)
    train = pd.read_csv(data / "train.csv")
    test = pd.read_csv(data / "test.csv")
    labels = sorted(train["category"].unique())
    validation = stratified(train, 2, seed=1)
    train = train.drop(validation.index)
    calibration = stratified(train, args.calibration_per_label, seed=2) if args.cascade else train.head(0)
    train = train.drop(calibration.index).sample(frac=1.0, random_state=0)
    budget_s = args.budget_minutes * 60
    if args.quick:
        train, validation, budget_s = stratified(train, 2, seed=0), validation.head(16), 20.0
        test = stratified(test, 1, seed=0)
        calibration = calibration.groupby("category").head(1)
        args.baseline_steps = 3
    elif args.test_rows:
        test = test.sample(args.test_rows, random_state=0)
    to_rows = lambda frame: [{"messages": conversation(t, c)} for t, c in zip(frame["text"], frame["category"])]
    train_rows = to_rows(train)

    config = TrainingConfig(rank=args.rank, alpha=2 * args.rank, dropout=0.0, lora_layers=args.lora_layers,
                            learning_rate=args.learning_rate, warmup_fraction=0.03, epochs=args.epochs,
                            max_seconds=budget_s, batch_size=args.batch_size, label_vocab_loss=True,
                            checkpoint_every=0, max_seq_len=256)
    if args.students:
        return print(json.dumps(compare_students(args, base_model, config, to_rows(train), calibration, test, labels)))
    print(f"baseline: Trainer + peft for {args.baseline_steps} steps", flush=True)
    baseline = baseline_tokens_per_s(base_model, train_rows, config, args.baseline_steps)
    print(f"baseline {baseline:.0f} tokens/s; training for up to {budget_s:.0f} s on {len(train_rows)} rows",
          flush=True)

    with tempfile.TemporaryDirectory() as work:
        adapter = Path(work) / "adapter"
        result = train_lora(Dataset.from_list(train_rows), Dataset.from_list(to_rows(validation)), base_model,
                            adapter, config, labels=labels,
                            on_step=lambda step, total, loss: step % 20 == 0 and print(
                                f"step {step} loss {loss:.3f}", flush=True))
        print(f"trained {result.steps} steps, {result.train_tokens} tokens in {result.seconds:.0f} s "
              f"({result.tokens_per_s:.0f} tokens/s); evaluating {len(test)} test rows", flush=True)
        model, tokenizer = load_model(base_model, {"banking77": adapter})
        if torch.cuda.is_available():
            model = model.to("cuda")
        began = time.perf_counter()
        policy = DecodingPolicy(labels=tuple(labels))
        generations = generate(model, tokenizer, [conversation(t) for t in test["text"]], max_new_tokens=24,
                               batch_size=64, policy=policy)
        eval_seconds = time.perf_counter() - began
        calibrated = generate(model, tokenizer, [conversation(t) for t in calibration["text"]], max_new_tokens=24,
                              batch_size=64, policy=policy) if args.cascade else []
    metrics = classification_metrics(list(test["category"]), [g.text for g in generations])
    figures = cascade_figures(calibrated, list(calibration["category"]), generations, list(test["category"]),
                              args, small_usd_per_1k=args.serving_usd_per_hour / 3.6 * eval_seconds / len(test)) \
        if args.cascade else {}
    print(json.dumps({
        "accuracy": round(metrics["accuracy"], 4),
        "macro_f1": round(metrics["macro_f1"], 4),
        "test_rows": len(test),
        "train_seconds": round(result.seconds, 1),
        "train_examples": min(result.steps * config.batch_size, result.train_examples),
        "train_steps": result.steps,
        "tokens_per_s": round(result.tokens_per_s, 1),
        "baseline_tokens_per_s": round(baseline, 1),
        "speedup_vs_baseline": round(result.tokens_per_s / baseline, 2),
        "validation_loss": round(result.validation_loss, 4) if result.validation_loss is not None else None,
        "eval_seconds": round(eval_seconds, 1),
        "device": result.device,
        "peak_gpu_memory_mb": round(result.peak_memory_mb),
        "lora_layers": config.lora_layers,
        "rank": config.rank,
        "quick": args.quick,
        **figures,
    }))


def compare_students(args, base_model: str, config: TrainingConfig, train_rows: list[dict], calibration: pd.DataFrame,
                     test: pd.DataFrame, labels: list[str]) -> dict:
    """``--students`` (the module's docstring)."""
    from dataclasses import asdict

    from distillery.evaluation import row_agreement, score_answers
    from distillery.evaluation.gate import GatePolicy
    from distillery.evaluation.selection import StudentFigures, choose_student, measure_student, pair_figures
    from distillery.models import BUNDLED_ENCODER
    from distillery.serving import load_students
    from distillery.students import CLASSIFIER, GENERATIVE
    from distillery.training.students import Candidate, candidate_config, train_candidate

    policy = DecodingPolicy(labels=tuple(labels))
    gate = GatePolicy(max_gap_to_frontier=args.cascade_margin_points / 100, min_test_rows=1, min_calibration_rows=1)
    settings = {k: v for k, v in asdict(config).items() if k != "max_seconds"}
    candidates = [Candidate(GENERATIVE, base_model, settings),
                  Candidate(CLASSIFIER, BUNDLED_ENCODER, {"max_seq_len": 64} if not args.quick else {"epochs": 1.0})]
    validation = [conversation(t) for t in calibration["text"]]
    references = list(calibration["category"])
    tests = [conversation(t) for t in test["text"]]
    test_labels = list(test["category"])

    def score(references):
        def scored(answers):
            headline, ci95, _, _, items = score_answers("classification", references, [g.text for g in answers])
            return headline, ci95, row_agreement("classification", references, [g.text for g in answers], items)
        return scored

    budget_s = config.max_seconds
    figures, answers, test_answers, folders = [], {}, {}, {}
    with tempfile.TemporaryDirectory() as work:
        began = time.perf_counter()
        for position, candidate in enumerate(candidates):
            share = max(budget_s - (time.perf_counter() - began), 1.0) / (len(candidates) - position)
            folder = Path(work) / candidate.label
            print(f"training {candidate.label} for up to {share:.0f} s", flush=True)
            result = train_candidate(candidate, candidate_config(candidate, share), train_rows, [], folder, policy)
            folders[candidate.label] = (folder, resolve_base_model(candidate.base_model))
            row = StudentFigures(candidate.label, candidate.kind, candidate.base_model, "trained")
            row.test = {"train_seconds": round(result.seconds, 1), "train_steps": result.steps}
            figures.append(row)
        for row in figures:
            student = load_students({row.name: folders[row.name]})[row.name]
            print(f"measuring {row.name} on {len(validation)} validation rows", flush=True)
            _, answers[row.name] = measure_student(
                row, student, validation, score(references), decoding=policy, gate=gate,
                usd_per_hour=args.serving_usd_per_hour, frontier_usd_per_1k=args.frontier_usd_per_1k, concurrency=16,
                batch_size=64, max_new_tokens=24)
            print(f"answering the {len(tests)} test rows with {row.name}", flush=True)
            began = time.perf_counter()
            test_answers[row.name] = student.answer(tests, policy=policy, max_new_tokens=24, batch_size=64)
            seconds = time.perf_counter() - began
            accuracy = [float(g.text == label) for g, label in zip(test_answers[row.name], test_labels)]
            threshold = (row.cascade or {}).get("threshold")
            measure = (row.cascade or {}).get("measure", LABEL_PROBABILITY)
            covered = [a for g, a in zip(test_answers[row.name], accuracy)
                       if threshold is not None and g.confidence(measure) >= threshold]
            coverage = len(covered) / len(accuracy)
            row.test.update(accuracy=round(statistics.fmean(accuracy), 4), rows_per_s=round(len(tests) / seconds, 1),
                            coverage=round(coverage, 4),
                            covered_accuracy=round(statistics.fmean(covered), 4) if covered else None,
                            blended_usd_per_1k=round(blended_usd_per_1k(coverage, row.small_usd_per_1k or 0.0,
                                                                        args.frontier_usd_per_1k), 5))
            del student
        chosen = choose_student(figures)
        served = load_students({chosen.name: folders[chosen.name]})[chosen.name].serve(
            tests, concurrency=16, policy=policy, max_new_tokens=24, batch_size=64)
        pair = pair_figures(figures[0], figures[1], test_answers[figures[0].name], test_answers[figures[1].name],
                            [float(g.text == label) for g, label in zip(test_answers[figures[0].name], test_labels)],
                            gate, args.frontier_usd_per_1k)
    print(f"| student | train s | validation accuracy | mode | served rps | test accuracy | coverage | covered "
          f"accuracy | blended $/1k | chosen |\n|---|---:|---:|---|---:|---:|---:|---:|---:|---|")
    for row in figures:
        t = row.test
        print(f"| {row.name} ({row.kind}) | {t['train_seconds']} | {row.headline:.4f} | {row.mode} | "
              f"{row.requests_per_s:.1f} | {t['accuracy']} | {t['coverage']} | {t['covered_accuracy']} | "
              f"{t['blended_usd_per_1k']} | {'yes' if row.chosen else 'no'}: {row.reason} |", flush=True)
    print(f"pair (on the test rows): {pair}", flush=True)
    return {"chosen": chosen.name, "candidates": [row.as_dict() for row in figures], "pair_on_test": pair,
            "accuracy": chosen.test["accuracy"], "coverage": chosen.test["coverage"],
            "covered_accuracy": chosen.test["covered_accuracy"], "blended_usd_per_1k": chosen.test["blended_usd_per_1k"],
            "frontier_usd_per_1k": args.frontier_usd_per_1k,
            "cheaper_than_frontier": round(args.frontier_usd_per_1k / chosen.test["blended_usd_per_1k"], 1)
            if chosen.test["blended_usd_per_1k"] else None,
            "served_rps_c16": round(served.requests_per_s, 1),
            "served_answers_match_eval": round(statistics.fmean(
                float(s.text == e.text) for s, e in zip(served.generations, test_answers[chosen.name])), 4),
            "test_rows": len(tests), "quick": args.quick}


def cascade_figures(calibrated, calibration_labels, generations, test_labels, args, small_usd_per_1k: float) -> dict:
    """The cascade chosen on the calibration rows, measured on the test rows (``eval_report``'s own functions)."""
    def agreement(answers, labels):
        return [float(agrees(g.text, label)) for g, label in zip(answers, labels)]

    chosen = choose({LABEL_PROBABILITY: [g.confidence(LABEL_PROBABILITY) for g in calibrated]},
                    agreement(calibrated, calibration_labels), max_gap=args.cascade_margin_points / 100, min_rows=1)
    print(f"cascade: {chosen.note}", flush=True)
    checked = check(chosen, [g.confidence(LABEL_PROBABILITY) for g in generations],
                    agreement(generations, test_labels))
    test = checked.test
    full = statistics.fmean(agreement(generations, test_labels))
    return {
        "calibration_rows": len(calibrated),
        "cascade_threshold": round(chosen.cascade.threshold, 6) if chosen.cascade else None,
        "coverage": round(test.coverage, 4) if test else 0.0,
        "covered_accuracy": round(test.covered_agreement, 4) if test else None,
        "covered_accuracy_low": round(test.covered_agreement_ci95[0], 4) if test else None,
        "blended_accuracy": round(test.blended_agreement, 4) if test else 1.0,
        "full_accuracy": round(full, 4),
        "small_usd_per_1k": round(small_usd_per_1k, 5),
        "frontier_usd_per_1k": args.frontier_usd_per_1k,
        "blended_usd_per_1k": round(blended_usd_per_1k(test.coverage if test else 0.0, small_usd_per_1k,
                                                       args.frontier_usd_per_1k), 5),
    }


if __name__ == "__main__":
    main()
