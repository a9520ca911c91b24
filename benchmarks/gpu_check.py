"""The GPU check: Banking77's classifier student and the local serving engine on a CUDA machine.

    python benchmarks/gpu_check.py --encoder PATH --generative PATH [--quick]

(``scripts/gpu-check`` prepares what travels to a GPU machine and runs this there.) On whatever device it finds:

1. The classifier student (``training.encoders``, all-MiniLM-L6-v2) on Banking77, full fine-tuning and LoRA (r=16)
   side by side, each 3 epochs on train.csv less 10 rows of each label (770, held out to calibrate the cascade as
   ``eval_report`` does, with a 2-point margin); on all 3,080 test rows: accuracy, the cascade's coverage and covered
   accuracy, rows/s answered in batches, and requests/s at 16 and 64 concurrent callers through the serving engine's
   micro-batching (``serving.BatchingEngine``), the blended cost per 1k at ``--usd-per-hour``.
2. The generative engine (``serving.generate`` under the 77-label policy, and the same ``BatchingEngine``) on the same
   test prompts, with SmolLM2-135M's architecture and tokenizer but random weights: the bundled model's weights (a
   93 MB GGUF) cannot travel to the GPU machine, and a forward pass costs the same whatever the weights; its answers
   are not scored. The baseline of the classifier's throughput, measured in the same run.

The last line is one JSON object. ``--quick`` is a CPU-sized run (a few seconds of training, 77 test rows) for the
tests.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distillery.evaluation.cascade import check, choose  # noqa: E402
from distillery.evaluation.costs import blended_usd_per_1k  # noqa: E402
from distillery.serving.encoders import EncoderStudent  # noqa: E402
from distillery.serving.engine import BatchingEngine, generate, serve_under_load  # noqa: E402
from distillery.settings import public_dataset  # noqa: E402
from distillery.tasks import LABEL_PROBABILITY, DecodingPolicy  # noqa: E402
from distillery.training.encoders import EncoderConfig, train_classifier  # noqa: E402

SYSTEM = "Banking intent."


def conversation(text: str, label: str | None = None) -> list[dict]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
    return messages + ([{"role": "assistant", "content": label}] if label is not None else [])


def served_rps(engine: BatchingEngine, conversations: list[list[dict]], concurrency: int, **options) -> float:
    serve_under_load(engine, conversations[:concurrency * 4], concurrency=concurrency, **options)  # warm up
    return round(serve_under_load(engine, conversations, concurrency=concurrency, **options).requests_per_s, 1)


def classifier_figures(name: str, config: EncoderConfig, encoder: str, train: pd.DataFrame, calibration: pd.DataFrame,
                       test: pd.DataFrame, labels: list[str], args) -> dict:
    with tempfile.TemporaryDirectory() as work:
        began = time.perf_counter()
        result = train_classifier([{"messages": conversation(t, c)} for t, c in zip(train.text, train.category)],
                                  [], encoder, labels, Path(work), config)
        train_seconds = time.perf_counter() - began
        student = EncoderStudent.load(Path(work))
        prompts = [conversation(t) for t in test.text]
        student.answer(prompts[:256], batch_size=args.batch_size)  # warm up
        began = time.perf_counter()
        answers = student.answer(prompts, batch_size=args.batch_size)
        batch_rps = len(prompts) / (time.perf_counter() - began)
        calibrated = student.answer([conversation(t) for t in calibration.text], batch_size=args.batch_size)
        engine = BatchingEngine(None, None, max_batch=64,
                                answer_batch=lambda adapter, rows, policies, tokens: student.answer(rows, 64))
        rps = {f"served_rps_c{c}": served_rps(engine, prompts, c, adapter=None) for c in (16, 64)}
        engine.close()
    agreement = [float(a.text == c) for a, c in zip(answers, test.category)]
    chosen = choose({LABEL_PROBABILITY: [a.confidence(LABEL_PROBABILITY) for a in calibrated]},
                    [float(a.text == c) for a, c in zip(calibrated, calibration.category)], max_gap=0.02, min_rows=1)
    tested = check(chosen, [a.confidence(LABEL_PROBABILITY) for a in answers], agreement).test
    coverage = tested.coverage if tested else 0.0
    small_usd_per_1k = args.usd_per_hour / 3.6 / rps["served_rps_c16"]
    return {f"{name}_{key}": value for key, value in {
        "accuracy": round(statistics.fmean(agreement), 4), "train_seconds": round(train_seconds, 1),
        "train_steps": result.steps, "batch_rows_per_s": round(batch_rps, 1), **rps,
        "cascade_threshold": round(chosen.cascade.threshold, 4) if chosen.cascade else None,
        "coverage": round(coverage, 4), "covered_accuracy": round(tested.covered_agreement, 4) if tested else None,
        "blended_usd_per_1k": round(blended_usd_per_1k(coverage, small_usd_per_1k, args.frontier_usd_per_1k), 5),
    }.items()}


def generative_figures(folder: str, test: pd.DataFrame, labels: list[str], args) -> dict:
    """The serving engine's throughput on SmolLM2-135M's architecture with random weights (see the docstring)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from distillery.models import load_tokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder)).eval()
    if torch.cuda.is_available():
        model = model.to("cuda")
    tokenizer = load_tokenizer(folder)
    policy = DecodingPolicy(labels=tuple(labels))
    prompts = [conversation(t) for t in test.text]
    generate(model, tokenizer, prompts[:128], max_new_tokens=24, batch_size=args.batch_size, policy=policy)
    began = time.perf_counter()
    generate(model, tokenizer, prompts, max_new_tokens=24, batch_size=args.batch_size, policy=policy)
    batch_rps = len(prompts) / (time.perf_counter() - began)
    engine = BatchingEngine(model, tokenizer, max_batch=64)
    rps = {f"generative_served_rps_c{c}": served_rps(engine, prompts, c, adapter=None, policy=policy,
                                                     max_new_tokens=24) for c in (16, 64)}
    engine.close()
    return {"generative_batch_rows_per_s": round(batch_rps, 1), **rps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", required=True, help="all-MiniLM-L6-v2's transformers folder")
    parser.add_argument("--generative", required=True, help="a folder with SmolLM2-135M's config and tokenizer")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--usd-per-hour", type=float, default=1.0, help="the small model's machine, for its cost")
    parser.add_argument("--frontier-usd-per-1k", type=float, default=0.30)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    folder = public_dataset("banking77")
    train, test = pd.read_csv(folder / "train.csv"), pd.read_csv(folder / "test.csv")
    labels = sorted(train["category"].unique())
    calibration = train.groupby("category").sample(n=10, random_state=0)
    train = train.drop(calibration.index)
    if args.quick:
        train, calibration = train.sample(200, random_state=0), calibration.sample(40, random_state=0)
        test = test.groupby("category").sample(n=1, random_state=0)
        args.batch_size = 32
    epochs, seconds = (1.0, 10.0) if args.quick else (3.0, 0.0)
    figures = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
               "test_rows": len(test), "train_rows": len(train), "quick": args.quick}
    for name, config in (("full", EncoderConfig(epochs=epochs, max_seconds=seconds)),
                         ("lora", EncoderConfig(epochs=epochs, max_seconds=seconds, lora_rank=16, learning_rate=1e-3))):
        figures.update(classifier_figures(name, config, args.encoder, train, calibration, test, labels, args))
        print(json.dumps(figures), flush=True)
    figures.update(generative_figures(args.generative, test, labels, args))
    figures["full_vs_generative_served_rps_c16"] = round(
        figures["full_served_rps_c16"] / figures["generative_served_rps_c16"], 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
