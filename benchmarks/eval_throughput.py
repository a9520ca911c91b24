"""Batched evaluation throughput on the Banking77 test rows, against one-at-a-time generate.

    python benchmarks/eval_throughput.py [--rows N] [--adapter PATH] [--batch-size B] [--quick]

Batched: ``distillery.serving.generate``, as ``eval_report`` runs it on a classification
workload: decoding constrained to the 77 labels, prompts of similar length batched together,
the shared prompt prefix computed once, rows leaving the batch once their label is decided.
Sequential: plain ``model.generate`` one request at a time with the same constraint (a prefix
function over the same label trie, so both produce the same answers), the way a naive harness
calls it, on ``--sequential-rows`` of the same rows in the same run. ``--free`` drops the
constraint on both sides (free generation up to ``--max-new-tokens``). Prompts are the Banking77
benchmark's (benchmarks/banking77.py), from ``DISTILLERY_DATA``. ``--quick`` is the few-second run the tests make
(32 rows, 2 of them sequential). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from banking77 import conversation  # noqa: E402

from distillery.errors import DistilleryError  # noqa: E402
from distillery.models import resolve_base_model  # noqa: E402
from distillery.serving import AnswerTrie, generate, load_model  # noqa: E402
from distillery.settings import public_dataset  # noqa: E402
from distillery.tasks import DecodingPolicy  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=0, help="0: all 3,080")
    parser.add_argument("--adapter", type=Path, default=None, help="a peft adapter folder; default: the base model")
    parser.add_argument("--base-model", default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sequential-rows", type=int, default=24)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--free", action="store_true", help="no label constraint (free generation)")
    parser.add_argument("--quick", action="store_true", help="a few seconds, for the tests")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.sequential_rows, args.max_new_tokens = 32, 2, 8
    try:
        data = public_dataset("banking77")
    except DistilleryError as exc:
        sys.exit(f"benchmarks/eval_throughput.py: {exc}")

    test = pd.read_csv(data / "test.csv")
    if args.rows:
        test = test.sample(args.rows, random_state=0)
    conversations = [conversation(text) for text in test["text"]]
    model, tokenizer = load_model(resolve_base_model(args.base_model),
                                  {"adapter": args.adapter} if args.adapter else None)
    if torch.cuda.is_available():
        model = model.to("cuda")
    labels = None if args.free else sorted(pd.read_csv(data / "train.csv")["category"].unique())
    trie = AnswerTrie(tokenizer, tuple(labels)) if labels else None

    sample = conversations[: args.sequential_rows]
    began = time.perf_counter()
    with torch.no_grad():
        for messages in sample:
            prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
            width = encoded["input_ids"].shape[1]
            constrain = (lambda _row, ids: trie.allowed(ids[width:].tolist())) if trie else None
            model.generate(**encoded, max_new_tokens=args.max_new_tokens, do_sample=False,
                           pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                           prefix_allowed_tokens_fn=constrain)
    sequential_rows_per_s = len(sample) / (time.perf_counter() - began)

    began = time.perf_counter()
    generations = generate(model, tokenizer, conversations, max_new_tokens=args.max_new_tokens,
                           batch_size=args.batch_size, policy=DecodingPolicy(labels=tuple(labels or ())))
    seconds = time.perf_counter() - began
    print(json.dumps({
        "rows": len(generations),
        "seconds": round(seconds, 1),
        "rows_per_s": round(len(generations) / seconds, 2),
        "sequential_rows_per_s": round(sequential_rows_per_s, 3),
        "sequential_rows": len(sample),
        "speedup": round(len(generations) / seconds / sequential_rows_per_s, 2),
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "constrained_to_labels": labels is not None,
        "generated_tokens": sum(g.completion_tokens for g in generations),
        "adapter": str(args.adapter) if args.adapter else None,
        "device": str(model.device),
        "quick": args.quick,
    }))


if __name__ == "__main__":
    main()
