"""From raw log rows to a clean, leak-free chat-format training set, every decision counted.

Steps, in order, each counted in ``CurationReport.steps``: malformed rows (request messages
that are not a list of role/content strings, answers that are not text), failed exchanges, empty answers,
truncated answers (``finish_reason == "length"``), refusals, examples over the token limit,
answers outside the label set (classification) or not a JSON object, or not valid against the
workload's JSON schema (extraction), then
exact duplicates of the normalized prompt, then near duplicates (MinHash, ``neardup``) of
what the caller wrote (system messages are shared by every call and left out); among
duplicates the most common answer wins, then the newest, and conflicts are counted. PII is
replaced by typed placeholders in prompts and answers.
The split is stratified by label for classification and by time otherwise (newest rows to
test); the test split is never trained on. For JSON answers the report measures, per string field, how often the
frontier's value is a verbatim copy of the user's text (``copy_rates``): the fields grounded decoding may hold to
copies.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable

import jsonschema
import numpy as np
import orjson
import pandas as pd
from datasets import Dataset, DatasetDict

from distillery.curation.neardup import clusters_of, signatures
from distillery.curation.pii import scrub
from distillery.errors import DistilleryError
from distillery.grounding import CALLER_ROLES, field_schema, is_plain_string, leaf_fields, message_text, user_text
from distillery.store import STATUS_OK
from distillery.tasks import (CLASSIFICATION, EXTRACTION, FREE_TEXT, TOOL_CALL, parse_record, serialize_answer,
                              tool_call_answer, tool_spec)

SPLITS = ("train", "validation", "test")
LEAKAGE_THRESHOLD = 0.75  # MinHash-estimated Jaccard of character 3-grams (neardup)
_REFUSAL = re.compile(
    r"^\s*(?:I'?m sorry,? but|I am sorry,? but|I (?:can(?:no|')t|am unable to|won't) (?:help|assist|provide|comply)"
    r"|As an AI(?: language model)?,? I)", re.IGNORECASE)


@dataclass
class CurationReport:
    task: str
    steps: dict[str, int]  # "rows in", then rows dropped by each step, in order
    duplicate_conflicts: int
    pii: dict[str, int]
    labels: list[str]
    label_counts: dict[str, int]
    train: int
    validation: int
    test: int
    content_hash: str
    first_log_id: int
    last_log_id: int
    log_ids: list[int] = field(default_factory=list, repr=False)
    # The JSON schema answers must satisfy (extraction, tool calls), and where it came from: the run config, the
    # traffic's own ``response_format`` (or Responses' ``text.format``), or its tools; the newest traffic's wins.
    json_schema: dict | None = None
    schema_source: str | None = None
    rows_under_older_schemas: int = 0  # usable rows whose requests carried another schema (or other tools)
    # JSON answers: per leaf field with string values, the share of them that are a substring of the prompt's user
    # text (what grounded decoding may copy), and the fields copied in at least COPIED_SHARE of their rows.
    copy_rates: dict[str, float] = field(default_factory=dict)
    copied_fields: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


COPIED_SHARE = 0.95  # a field whose values are copies of the user's text this often is marked copied


def copy_rates(examples: list[dict]) -> dict[str, float]:
    """Per leaf field of the JSON answers (``grounding.leaf_fields`` paths) with string values: the share of those values
    found verbatim in the prompt's user messages."""
    copied: Counter = Counter()
    seen: Counter = Counter()
    for example in examples:
        *prompt, answer = example["messages"]
        text = user_text(prompt)
        for (path, encoded), count in leaf_fields(parse_record(answer["content"]) or {}).items():
            value = json.loads(encoded)
            if isinstance(value, str):
                seen[path] += count
                copied[path] += count * (value in text)
    return {path: copied[path] / seen[path] for path in sorted(seen)}


def normalize_prompt(messages: list[dict]) -> str:
    """The prompt as exact duplicates are compared: roles and contents, whitespace and case folded."""
    return orjson.dumps([(m["role"], " ".join(m["content"].split()).casefold()) for m in messages]).decode()


def _has_tool_calls(calls) -> bool:
    return isinstance(calls, list) and len(calls) > 0


def requested_schema(params) -> dict | None:
    """The JSON schema a request asks its answer to follow: chat's ``response_format`` or the Responses API's
    ``text.format``, of type ``json_schema``; None otherwise."""
    if not isinstance(params, dict):
        return None
    response_format = params.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        return schema if isinstance(schema, dict) else None
    text_format = (params.get("text") or {}).get("format") if isinstance(params.get("text"), dict) else None
    if isinstance(text_format, dict) and text_format.get("type") == "json_schema":
        return text_format.get("schema") if isinstance(text_format.get("schema"), dict) else None
    return None


def _answer_schema(frame: pd.DataFrame, task: str, given: dict | None) -> tuple[dict | None, str | None, int]:
    """The schema answers are held to, where it came from, and how many rows asked for another: the run config's;
    else, for tool calls, the one of the newest request's tools; for extraction, the newest ``response_format``."""
    if given:
        return given, "run config", 0
    if "request_params" not in frame:
        return None, None, 0
    if task == TOOL_CALL:
        # No more calls per answer than the traffic ever made: an untrained model otherwise repeats its call until
        # its token budget runs out (tests/test_pipeline.py)
        most = int(frame["response_text"].map(lambda answer: len(json.loads(answer)["tool_calls"])).max()) \
            if len(frame) else None
        specs = frame["request_params"].map(tool_spec)
        built = {spec: spec.schema(most) for spec in set(specs.dropna())}  # once per set of tools, not per row
        schemas = specs.map(lambda spec: built.get(spec) if spec is not None else None)
        source = "the requests' tools"
    elif task == EXTRACTION:
        schemas = frame["request_params"].map(requested_schema)
        source = "the requests' response_format"
    else:
        return None, None, 0
    asked = schemas[schemas.notna()]
    if asked.empty:
        return None, None, 0
    newest = asked.iloc[-1]
    return newest, source, int(sum(schema != newest for schema in asked))


def infer_task(answers: pd.Series) -> str:
    """Classification when a few short answers repeat, extraction when answers are JSON objects."""
    answers = answers.str.strip()
    if (answers.map(_is_json_object).mean() >= 0.9):
        return EXTRACTION
    distinct = answers.nunique()
    if distinct <= 200 and len(answers) >= 2 * distinct and answers.str.len().max() <= 60:
        return CLASSIFICATION
    return FREE_TEXT


def _valid_messages(messages) -> bool:
    return isinstance(messages, list) and bool(messages) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages)


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except (json.JSONDecodeError, TypeError):
        return False


def curate(
    rows: pd.DataFrame,
    workload: str,
    *,
    seed: int = 0,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    min_rows: int = 20,
    task: str = "auto",
    labels: list[str] | None = None,
    min_label_count: int = 2,
    json_schema: dict | None = None,
    near_duplicate_threshold: float | None = LEAKAGE_THRESHOLD,
    scrub_pii: bool = True,
    max_tokens: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
    copied_share: float = COPIED_SHARE,
) -> tuple[DatasetDict, CurationReport]:
    steps: dict[str, int] = {"rows in": len(rows)}

    def keep(frame: pd.DataFrame, mask: pd.Series, step: str) -> pd.DataFrame:
        steps[step] = int((~mask).sum())
        return frame[mask]

    has_calls = rows["tool_calls"].map(_has_tool_calls) if "tool_calls" in rows else pd.Series(False, rows.index)
    answered = rows["status"] == STATUS_OK
    if task == "auto" and answered.any() and has_calls[answered].mean() >= 0.9:
        task = TOOL_CALL
    well_formed = rows["request_messages"].map(_valid_messages) & rows["response_text"].map(
        lambda answer: isinstance(answer, str) or (not isinstance(answer, (dict, list)) and pd.isna(answer)))
    frame = keep(rows, well_formed, "malformed rows")
    frame = keep(frame, frame["status"] == STATUS_OK, "failed exchanges")
    if task == TOOL_CALL:
        # The answer trained on is the calls with their arguments (tasks.tool_call_answer); arguments that are not a
        # JSON object stay in the log as the provider sent them and are never trained on.
        frame = keep(frame, has_calls[frame.index], "answers without a tool call")
        calls = frame["tool_calls"].map(tool_call_answer)
        frame = keep(frame.assign(response_text=calls), calls.notna(), "tool calls whose arguments are not JSON")
    frame = frame.assign(response_text=frame["response_text"].fillna("").str.strip())
    frame = keep(frame, frame["response_text"] != "", "empty answers")
    frame = keep(frame, frame["finish_reason"].fillna("") != "length", "truncated answers")
    frame = keep(frame, ~frame["response_text"].str.match(_REFUSAL), "refusals")
    if max_tokens and count_tokens:
        lengths = frame.apply(lambda r: count_tokens(" ".join(m["content"] for m in r.request_messages)
                                                     + r.response_text), axis=1)
        frame = keep(frame, lengths <= max_tokens, f"over {max_tokens} tokens")

    task = infer_task(frame["response_text"]) if task == "auto" and len(frame) else task
    if task == CLASSIFICATION:
        counts = frame["response_text"].value_counts()
        label_set = list(labels) if labels else sorted(counts[counts >= min_label_count].index)
        frame = keep(frame, frame["response_text"].isin(label_set), "answers outside the label set")
    else:
        label_set = []
    json_schema, schema_source, older_schemas = _answer_schema(frame, task, json_schema)
    if task == EXTRACTION:
        frame = keep(frame, frame["response_text"].map(_is_json_object), "answers not a JSON object")
    if task in (EXTRACTION, TOOL_CALL) and json_schema:
        try:
            jsonschema.Draft202012Validator.check_schema(json_schema)
        except jsonschema.SchemaError as exc:
            raise DistilleryError(f"workload {workload!r}: the JSON schema from {schema_source} is not a valid JSON "
                                  f"schema ({exc.message}); give one in the run config (json_schema)") from exc
        validator = jsonschema.Draft202012Validator(json_schema)
        conforms = frame["response_text"].map(lambda text: validator.is_valid(json.loads(text)))
        frame = keep(frame, conforms, "answers violating the JSON schema")

    frame = frame.assign(prompt_key=frame["request_messages"].map(normalize_prompt))
    unique, conflicts = _deduplicate(frame)
    steps["exact duplicate prompts"] = len(frame) - len(unique)
    # One MinHash signature per prompt, for the near-duplicate removal and the leak check both.
    sigs = signatures(list(unique["request_messages"].map(lambda messages: message_text(messages, CALLER_ROLES))))
    if near_duplicate_threshold is not None and len(unique) > 1:
        cluster = clusters_of(sigs, near_duplicate_threshold)
        near = unique.assign(prompt_key=unique["prompt_key"].to_numpy()[cluster], signature_row=np.arange(len(unique)))
        unique, near_conflicts = _deduplicate(near)
        sigs = sigs[unique["signature_row"].to_numpy()]
        conflicts += near_conflicts
        steps["near-duplicate prompts"] = len(near) - len(unique)

    if len(unique) < min_rows:
        dropped = ", ".join(f"{n} {step}" for step, n in list(steps.items())[1:] if n)
        raise DistilleryError(
            f"workload {workload!r} has {len(unique)} usable rows after curation ({steps['rows in']} in"
            f"{'; dropped: ' + dropped if dropped else ''}); at least {min_rows} are needed to split into "
            "train/validation/test: capture more traffic"
        )

    # Split and leak check before the examples are built, so that the signatures are gone by then (memory).
    parts = _split(list(unique["response_text"]), task, seed, validation_fraction, test_fraction)
    moved = _move_leaks_to_train(parts, unique["prompt_key"].to_numpy(), sigs,
                                 near_duplicate_threshold or LEAKAGE_THRESHOLD)
    del sigs
    if moved:
        steps["test rows moved to train (near a train prompt)"] = moved

    pii: Counter = Counter()
    clean = scrub if scrub_pii else (lambda text, _counts: text)
    examples = []
    for row in unique.itertuples():
        messages = [{**m, "content": clean(m["content"], pii)} for m in row.request_messages]
        answer = clean(row.response_text, pii)
        if task == EXTRACTION and (record := parse_record(answer)) is not None:
            answer = serialize_answer(record, json_schema)  # the recipe's one spelling of a record
        examples.append({"log_id": int(row.id), "messages": [*messages, {"role": "assistant", "content": answer}]})
    splits = {split: [examples[i] for i in sorted(parts[split])] for split in SPLITS}
    dataset = DatasetDict({split: Dataset.from_list(rows) for split, rows in splits.items()})
    answers = Counter(ex["messages"][-1]["content"] for ex in examples) if task == CLASSIFICATION else Counter()
    rates = copy_rates(examples) if task in (EXTRACTION, TOOL_CALL) else {}
    report = CurationReport(
        task=task, steps=steps, duplicate_conflicts=conflicts, pii=dict(pii), labels=label_set,
        label_counts=dict(answers.most_common()),
        train=len(parts["train"]), validation=len(parts["validation"]), test=len(parts["test"]),
        content_hash=dataset_hash(splits), first_log_id=int(unique["id"].min()),
        last_log_id=int(unique["id"].max()), log_ids=sorted(int(i) for i in unique["id"]),
        json_schema=json_schema, schema_source=schema_source, rows_under_older_schemas=older_schemas,
        copy_rates=rates, copied_fields=[path for path, rate in rates.items() if rate >= copied_share and task ==
                                         EXTRACTION and is_plain_string(field_schema(json_schema or {}, path))],
    )
    return dataset, report


def _deduplicate(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One row per prompt: the most common answer among its duplicates, the newest such row."""
    answer_counts = frame.groupby(["prompt_key", "response_text"])["id"].transform("size")
    ranked = frame.assign(answer_count=answer_counts).sort_values(["answer_count", "id"])
    unique = ranked.drop_duplicates("prompt_key", keep="last").sort_values("id")
    conflicts = int((frame.groupby("prompt_key")["response_text"].nunique() > 1).sum())
    return unique.drop(columns=["answer_count"]), conflicts


def _split(answers: list[str], task: str, seed: int, validation_fraction: float,
           test_fraction: float) -> dict[str, list[int]]:
    """Positions per split: stratified by answer (the label) for classification, else the newest to test."""
    rng = random.Random(seed)
    if task == CLASSIFICATION:
        groups: dict[str, list[int]] = {}
        for i, answer in enumerate(answers):
            groups.setdefault(answer, []).append(i)
        strata = [rng.sample(members, len(members)) for _, members in sorted(groups.items())]
    else:
        strata = [list(range(len(answers)))]  # rows are in log order: the newest go to test
    parts: dict[str, list[int]] = {split: [] for split in SPLITS}
    for members in strata:
        n_test = round(len(members) * test_fraction)
        n_validation = round(len(members) * validation_fraction)
        if task != CLASSIFICATION:
            n_test, n_validation = max(1, n_test), max(1, n_validation)
        cut = len(members) - n_test
        parts["test"] += members[cut:]
        parts["validation"] += members[cut - n_validation : cut]
        parts["train"] += members[: cut - n_validation]
    for split in ("test", "validation"):  # tiny strata can round to zero everywhere
        if not parts[split] and len(parts["train"]) > 1:
            parts[split].append(parts["train"].pop(rng.randrange(len(parts["train"]))))
    return parts


def leaked_test_rows(train: list[list[dict]], test: list[list[dict]],
                     threshold: float = LEAKAGE_THRESHOLD) -> list[int]:
    """Positions in ``test`` of prompts that are exact or near duplicates of a ``train`` prompt.

    Exact: the whole conversation, system prompt included. Near: what the caller wrote (the
    system prompt left out, as it is shared), in one near-duplicate cluster with a train prompt.
    """
    keys = np.array([normalize_prompt(messages) for messages in [*train, *test]], dtype=object)
    sigs = signatures([message_text(messages, CALLER_ROLES) for messages in [*train, *test]])
    return _leaked(keys, sigs, len(train), threshold)


def _leaked(keys: np.ndarray, sigs: np.ndarray, n_train: int, threshold: float) -> list[int]:
    """``leaked_test_rows`` on the prompt keys and MinHash signatures of train then test, computed by the caller."""
    cluster = clusters_of(sigs, threshold)
    train_clusters, known = set(cluster[:n_train]), set(keys[:n_train])
    return [i for i, (key, c) in enumerate(zip(keys[n_train:], cluster[n_train:]))
            if key in known or c in train_clusters]


def _move_leaks_to_train(parts: dict[str, list[int]], keys: np.ndarray, sigs: np.ndarray, threshold: float) -> int:
    """A held-out prompt that (nearly) repeats a train prompt would flatter the model: it goes to train instead.

    ``keys`` and ``sigs`` are the examples' prompt keys and signatures (taken before PII scrubbing). One pass is
    enough: moving rows from test to train leaves their union, and so its clusters, as they were, and an exact
    repeat has the same signature, so it is in its original's cluster. (Near-duplicate removal does not make this
    pass empty: it compares each band's rows with that band's first row only, and the first row can be gone.)
    """
    rows = np.array(parts["train"] + parts["test"], dtype=int)
    leaked = set(_leaked(keys[rows], sigs[rows], len(parts["train"]), threshold))
    if not leaked or len(parts["test"]) - len(leaked) < 1:
        return 0
    parts["train"] += [parts["test"][k] for k in sorted(leaked)]
    parts["test"] = [i for k, i in enumerate(parts["test"]) if k not in leaked]
    return len(leaked)


def dataset_hash(splits: dict[str, list[dict]]) -> str:
    """A hash of the examples of each split, as they go into the dataset (not read back from Arrow: 10x slower)."""
    digest = hashlib.sha256()
    for split in SPLITS:
        for example in splits[split]:
            digest.update(split.encode())
            digest.update(orjson.dumps(example, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()[:16]


def data_card(workload: str, report: CurationReport, dataset: DatasetDict, examples: int = 3) -> str:
    lines = [f"# Data card: `{workload}`", "", f"Task: **{report.task}**. Content hash `{report.content_hash}`; "
             f"log ids {report.first_log_id}-{report.last_log_id}.", "", "| step | rows |", "|---|---:|"]
    lines += [f"| {step} | {n} |" if i == 0 else f"| dropped: {step} | {n} |" for i, (step, n) in
              enumerate(report.steps.items())]
    lines += [f"| train / validation / test | {report.train} / {report.validation} / {report.test} |", "",
              f"Prompts with conflicting answers among duplicates: {report.duplicate_conflicts}.", ""]
    lines += ["PII replaced: " + (", ".join(f"{k} {v}" for k, v in sorted(report.pii.items())) or "none") + ".", ""]
    if report.json_schema:
        lines += [f"Answers held to the JSON schema from {report.schema_source} (the newest); rows whose requests "
                  f"carried another: {report.rows_under_older_schemas}.", ""]
    if report.copy_rates:
        lines += [f"String fields of the answers, and how often their value is a copy of the user's text (copied: "
                  f"at least {COPIED_SHARE:.0%}):", "", "| field | copied from the user's text | copied |", "|---|---:|---|"]
        lines += [f"| `{path}` | {rate:.1%} | {'yes' if path in report.copied_fields else 'no'} |"
                  for path, rate in report.copy_rates.items()] + [""]
    if report.label_counts:
        lines += ["| label | rows |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in report.label_counts.items()]
        lines.append("")
    lines += ["Examples from train:", ""]
    for example in dataset["train"].select(range(min(examples, len(dataset["train"])))):
        prompt = example["messages"][-2]["content"].replace("\n", " ")[:120]
        lines.append(f"- {prompt} → `{example['messages'][-1]['content'][:80]}`")
    return "\n".join(lines)
