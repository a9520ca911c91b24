"""Curation throughput and quality on synthetic logs built from Banking77.

    python benchmarks/curation.py --rows 100000 [--quick]

Each synthetic row joins two Banking77 queries (so rows are distinct), answered with the
first one's intent. Then 10% of rows are exact copies of earlier rows, 10% are near copies
(one character edited), and 5% carry one injected PII value (email, phone, card, IBAN, IP or
SSN). The run curates them with distillery.curation and, on the same rows in the same run,
a plain baseline (pandas drop_duplicates + one regex pass). ``--quick`` curates 2,000 rows, what the tests run. The
last line is one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import re
import resource
import sys
import time

import pandas as pd

from distillery.curation import curate
from distillery.errors import DistilleryError
from distillery.settings import public_dataset


def luhn_card(rng: random.Random) -> str:
    digits = [4] + [rng.randrange(10) for _ in range(14)]
    total = sum(d if i % 2 else (d * 2 - 9 if d > 4 else d * 2) for i, d in enumerate(reversed(digits)))
    digits.append((10 - total % 10) % 10)
    return " ".join("".join(map(str, digits[i : i + 4])) for i in range(0, 16, 4))


def iban(rng: random.Random) -> str:
    bban = "".join(str(rng.randrange(10)) for _ in range(18))
    check = 98 - int("".join(str(int(c, 36)) for c in bban + "DE00")) % 97
    return f"DE{check:02d}{bban}"


def pii_value(rng: random.Random) -> str:
    kind = rng.randrange(6)
    if kind == 0:
        return f"{rng.choice(['anna', 'li.wei', 'j.smith'])}{rng.randrange(1000)}@example.com"
    if kind == 1:
        return f"+44 20 {rng.randrange(1000, 9999)} {rng.randrange(1000, 9999)}"
    if kind == 2:
        return luhn_card(rng)
    if kind == 3:
        return iban(rng)
    if kind == 4:
        return f"{rng.randrange(1, 255)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    return f"{rng.randrange(100, 665)}-{rng.randrange(10, 99)}-{rng.randrange(1000, 9999)}"


def edit(text: str, rng: random.Random) -> str:
    i = rng.randrange(len(text))
    return text[:i] + rng.choice("abcdefghijklmnopqrstuvwxyz") + text[i + 1 :]


def synthetic_rows(n: int, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    rng = random.Random(seed)
    data = public_dataset("banking77")
    bank = pd.concat([pd.read_csv(data / "train.csv"), pd.read_csv(data / "test.csv")])
    texts, labels = list(bank["text"]), list(bank["category"])
    prompts, answers, kinds, sources, injected = [], [], [], [], []
    for i in range(n):
        roll = rng.random()
        if i > 10 and roll < 0.10:
            j = rng.randrange(i)
            prompts.append(prompts[j]); answers.append(answers[j]); kinds.append("exact"); sources.append(j)
            injected.append(None)
        elif i > 10 and roll < 0.20:
            j = rng.randrange(i)
            prompts.append(edit(prompts[j], rng)); answers.append(answers[j]); kinds.append("near"); sources.append(j)
            injected.append(None)
        else:
            a, b = rng.randrange(len(texts)), rng.randrange(len(texts))
            text = f"{texts[a]} {texts[b]}"
            value = None
            if roll < 0.25:
                value = pii_value(rng)
                text = f"{text} My details: {value}"
            prompts.append(text); answers.append(labels[a]); kinds.append("pii" if value else "plain")
            sources.append(-1); injected.append(value)
    now = dt.datetime.now(dt.timezone.utc)
    rows = pd.DataFrame({
        "id": range(1, n + 1), "status": "ok", "finish_reason": "stop", "created_at": now,
        "response_text": answers, "request_messages": [[{"role": "user", "content": p}] for p in prompts],
    })
    return rows, {"kinds": kinds, "sources": sources, "injected": injected, "prompts": prompts}


_BASELINE_PII = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+|\b\d[\d -]{8,}\d\b|\b(?:\d{1,3}\.){3}\d{1,3}\b")


def baseline(rows: pd.DataFrame) -> float:
    started = time.perf_counter()
    frame = pd.DataFrame({"prompt": [m[0]["content"] for m in rows["request_messages"]],
                          "answer": rows["response_text"]})
    frame = frame.drop_duplicates("prompt")
    frame["prompt"] = frame["prompt"].str.replace(_BASELINE_PII, "<PII>", regex=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="2,000 rows, for the tests")
    args = parser.parse_args()
    if args.quick:
        args.rows = 2000
    try:
        rows, truth = synthetic_rows(args.rows)
    except DistilleryError as exc:
        sys.exit(f"benchmarks/curation.py: {exc}")

    baseline_seconds = baseline(rows)
    started = time.perf_counter()
    dataset, report = curate(rows, "bench", task="classification", min_rows=10)
    seconds = time.perf_counter() - started
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    kept = set(report.log_ids)
    near = [(i + 1, truth["sources"][i] + 1) for i, k in enumerate(truth["kinds"]) if k == "near"]
    near_found = sum(not (row in kept and source in kept) for row, source in near)
    texts = {ex["log_id"]: ex["messages"][0]["content"] for split in dataset.values() for ex in split}
    pii_rows = [(i + 1, v) for i, v in enumerate(truth["injected"]) if v and i + 1 in texts]
    pii_found = sum(value not in texts[row] for row, value in pii_rows)
    plain = [i + 1 for i, k in enumerate(truth["kinds"]) if k == "plain" and i + 1 in texts]
    false_positives = sum(re.search(r"<(EMAIL|PHONE|CARD|IBAN|IP|SSN)>", texts[row]) is not None for row in plain)
    print(json.dumps({
        "rows": args.rows,
        "seconds": round(seconds, 2),
        "rows_per_s": round(args.rows / seconds),
        "peak_rss_gib": round(peak_gib, 2),
        "baseline_seconds": round(baseline_seconds, 2),
        "baseline_ratio": round(seconds / baseline_seconds, 1),
        "near_dup_recall": round(near_found / max(1, len(near)), 4),
        "pii_recall": round(pii_found / max(1, len(pii_rows)), 4),
        "pii_false_positive_rate": round(false_positives / max(1, len(plain)), 4),
        "rows_out": len(kept),
        "steps": report.steps,
        "pii_by_type": report.pii,
        "quick": args.quick,
    }))


if __name__ == "__main__":
    main()
