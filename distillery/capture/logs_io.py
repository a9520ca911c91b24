"""Import existing logs into the log store, and export a workload as fine-tuning JSONL.

Formats: OpenAI fine-tuning JSONL (``{"messages": [...]}``, the last assistant turn is the
answer), OpenAI Batch API output JSONL (joined with its input file by ``custom_id`` for
the request messages), OpenAI stored chat completions exported as JSONL (``openai-chat``: the
request body and the chat.completion in one record), any JSONL or CSV whose prompt and answer
the caller names (``--prompt-field``/``--answer-field``, dotted paths into JSONL records such as
``input.text`` or ``choices.0.message.content``), and DSTC8 slot-span files (Span-ConveRT's
``dstc8_spans``: a user turn in, a JSON object of its labelled slot values out).
Every imported row gets a uid derived from the workload and the source record (a DSTC8
record without an id: the file's name, its position and its content), so importing the
same file twice adds nothing, while repeated records stay separate exchanges. Records that
cannot be read are counted and summarized by cause, never silently dropped; they never stop
the import, unless ``strict``: then one bad record fails it and nothing is imported.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from distillery import wire
from distillery.errors import DistilleryError
from distillery.settings import validate_workload
from distillery.store import STATUS_ERROR, STATUS_OK, Exchange, LogStore, exchange_values

IMPORT_BATCH = 1000


@dataclass
class ImportResult:
    read: int = 0
    imported: int = 0
    already_stored: int = 0  # rows of an earlier import of the same records
    skipped: list[str] = field(default_factory=list)  # "line N: reason"

    def by_cause(self, examples: int = 3) -> list[tuple[str, int, list[str]]]:
        """(cause, how many, where the first ``examples`` were), the most frequent cause first."""
        groups: dict[str, list[str]] = {}
        for entry in self.skipped:
            where, _, cause = entry.partition(": ")
            groups.setdefault(cause, []).append(where)
        return sorted(((cause, len(found), found[:examples]) for cause, found in groups.items()),
                      key=lambda group: -group[1])

    def summary(self) -> str:
        return "; ".join(f"{count} x {cause} ({', '.join(where)}{', ...' if count > len(where) else ''})"
                         for cause, count, where in self.by_cause())


def _uid(workload: str, source: str) -> str:
    return hashlib.sha256(f"{workload}\0{source}".encode()).hexdigest()[:32]


def _jsonl(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8", errors="strict") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                yield number, line


def _finetune_records(path: Path, workload: str, result: ImportResult) -> Iterator[Exchange]:
    for number, line in _jsonl(path):
        result.read += 1
        try:
            messages = json.loads(line)["messages"]
            if not messages or messages[-1]["role"] != "assistant":
                raise ValueError("the last message is not the assistant's answer")
            answer = messages[-1]
            yield Exchange(workload=workload, request_messages=messages[:-1], response_text=answer.get("content"),
                           tool_calls=answer.get("tool_calls") or None, model="imported", uid=_uid(workload, line),
                           finish_reason="tool_calls" if answer.get("tool_calls") else "stop")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            result.skipped.append(f"line {number}: {exc.__class__.__name__}: {exc}")


def _batch_records(path: Path, requests_path: Path | None, workload: str,
                   result: ImportResult) -> Iterator[Exchange]:
    requests: dict[str, list] = {}
    if requests_path:
        for _, line in _jsonl(requests_path):
            try:
                record = json.loads(line)
                requests[record["custom_id"]] = record["body"]["messages"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    for number, line in _jsonl(path):
        result.read += 1
        try:
            record = json.loads(line)
            custom_id = record["custom_id"]
            messages = requests.get(custom_id, [])
            response = record.get("response") or {}
            body = response.get("body") or {}
            if record.get("error") or response.get("status_code", 200) >= 400:
                error = json.dumps(record.get("error") or body.get("error"))
                yield Exchange(workload=workload, request_messages=messages, response_text=None, status=STATUS_ERROR,
                               status_code=response.get("status_code"), error=error, uid=_uid(workload, line))
                continue
            answer = wire.answer_of(body)
            usage = answer.usage or {}
            yield Exchange(workload=workload, request_messages=messages, response_text=answer.text,
                           tool_calls=answer.tool_calls, refusal=answer.refusal, model=answer.model,
                           finish_reason=answer.finish_reason, prompt_tokens=usage.get("prompt_tokens"),
                           completion_tokens=usage.get("completion_tokens"), request_params={"custom_id": custom_id},
                           uid=_uid(workload, line))
        except (json.JSONDecodeError, KeyError, IndexError, TypeError, wire.WireError) as exc:
            result.skipped.append(f"line {number}: {exc.__class__.__name__}: {exc}")


def _field(record, path: str):
    """The value at a dotted path (``a.b.0.c``: keys, and list positions as numbers); KeyError when absent."""
    value = record
    for part in path.split("."):
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise KeyError(f"no {path!r}")
    return value


def _mapped(path: Path, workload: str, records: Iterator[tuple[int, dict]], prompt_field: str, answer_field: str,
            system_prompt: str | None, result: ImportResult) -> Iterator[Exchange]:
    """Records whose prompt and answer sit at the fields the caller named (JSONL records or CSV rows)."""
    prefix = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for number, record in records:
        result.read += 1
        try:
            prompt, answer = _field(record, prompt_field), _field(record, answer_field)
        except KeyError as exc:
            result.skipped.append(f"line {number}: missing field: {exc.args[0]}")
            continue
        if not isinstance(prompt, str) or not prompt or not isinstance(answer, str):
            result.skipped.append(f"line {number}: empty or non-text {prompt_field!r} or {answer_field!r}")
            continue
        yield Exchange(workload=workload, request_messages=[*prefix, {"role": "user", "content": prompt}],
                       response_text=answer, model="imported", finish_reason="stop",
                       uid=_uid(workload, f"{path.name}:{number}:{prompt}\0{answer}"))


def _csv_rows(path: Path, prompt_field: str, answer_field: str) -> Iterator[tuple[int, dict]]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {prompt_field, answer_field} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path} has no column(s) {sorted(missing)}; it has {reader.fieldnames}")
        yield from enumerate(reader, 2)


def _jsonl_rows(path: Path, result: ImportResult) -> Iterator[tuple[int, dict]]:
    for number, line in _jsonl(path):
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            result.read += 1
            result.skipped.append(f"line {number}: JSONDecodeError: {exc.msg}")


def _openai_chat_records(path: Path, workload: str, result: ImportResult) -> Iterator[Exchange]:
    """Stored chat completions, one JSON object per line: ``request`` (the request body, its messages included)
    and ``response`` (the chat.completion, or an ``error``)."""
    for number, record in _jsonl_rows(path, result):
        result.read += 1
        try:
            request, response = record["request"], record["response"]
            params = {k: v for k, v in request.items() if k != "messages"}
            uid = _uid(workload, f"{path.name}:{response.get('id') or number}")
            if "error" in response:
                yield Exchange(workload=workload, request_messages=request["messages"], response_text=None,
                               model=request.get("model"), request_params=params, status=STATUS_ERROR,
                               status_code=response.get("status_code"), error=json.dumps(response["error"]), uid=uid)
                continue
            answer = wire.answer_of(response)
            usage = answer.usage or {}
            yield Exchange(workload=workload, request_messages=request["messages"], response_text=answer.text,
                           tool_calls=answer.tool_calls, refusal=answer.refusal, model=answer.model,
                           request_params=params, finish_reason=answer.finish_reason,
                           prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"),
                           uid=uid)
        except (KeyError, IndexError, TypeError, AttributeError, wire.WireError) as exc:
            result.skipped.append(f"line {number}: {exc.__class__.__name__}: {exc}")


def dstc8_domain(folder: Path) -> tuple[list[str], dict]:
    """A DSTC8 domain folder's slots, in the order they first appear (training files first: the order the answers'
    keys take), and the JSON schema of its answers: each slot a string, no others."""
    files = sorted(folder.glob("*.json"), key=lambda p: (not p.name.startswith("train"), p.name))
    slots = list(dict.fromkeys(label["slot"] for file in files for example in json.loads(file.read_text("utf-8"))
                               for label in example.get("labels", ())))
    return slots, {"type": "object", "properties": {slot: {"type": "string"} for slot in slots},
                   "additionalProperties": False}


def dstc8_messages(example: dict, domain: str, slots: list[str]) -> list[dict]:
    """The call a DSTC8 user turn stands for: the domain's slots in the system prompt, the slots the dialogue just
    asked for (``context.requestedSlots``) as the assistant's turn before, and the user's text."""
    messages = [{"role": "system", "content": f"Extract the {domain.split('_')[0].lower()} slots the user gives "
                                              f"({', '.join(slots)}) as JSON."}]
    asked = (example.get("context") or {}).get("requestedSlots")
    if asked:
        messages.append({"role": "assistant", "content": f"(asks for {', '.join(asked)})"})
    return messages + [{"role": "user", "content": example["userInput"]["text"]}]


def dstc8_answer(example: dict) -> dict:
    """The labelled slot values: spans of the user's text (a missing ``startIndex`` means 0)."""
    text = example["userInput"]["text"]
    return {label["slot"]: text[label["valueSpan"].get("startIndex", 0):label["valueSpan"]["endIndex"]]
            for label in example.get("labels", ())}


def _dstc8_records(path: Path, workload: str, result: ImportResult) -> Iterator[Exchange]:
    """Every file of the domain folder names the slots, so train and test files get the same prompt and schema; the
    schema travels as the call's ``response_format``, as a structured-output call carries it."""
    examples = json.loads(path.read_text(encoding="utf-8"))
    slots, schema = dstc8_domain(path.parent)
    response_format = {"type": "json_schema", "json_schema": {"name": "slots", "schema": schema}}
    for number, example in enumerate(examples, 1):
        result.read += 1
        try:
            yield Exchange(workload=workload, request_messages=dstc8_messages(example, path.parent.name, slots),
                           request_params={"response_format": response_format},
                           response_text=json.dumps(dstc8_answer(example), ensure_ascii=False),
                           model="imported", finish_reason="stop", uid=_uid(workload, _dstc8_source(path, number, example)))
        except (KeyError, TypeError, AttributeError) as exc:
            result.skipped.append(f"record {number}: {exc.__class__.__name__}: {exc}")


def _dstc8_source(path: Path, number: int, example: dict) -> str:
    """What identifies a record: its id, else its file, position and content (the same text twice is two calls)."""
    if "id" in example:
        return f"{path.name}:{example['id']}"
    return f"{path.name}:{number}:{json.dumps(example, sort_keys=True, ensure_ascii=False)}"


def import_logs(store: LogStore, path: Path, workload: str, fmt: str, *, prompt_field: str = "text",
                answer_field: str = "label", system_prompt: str | None = None,
                requests_path: Path | None = None, strict: bool = False) -> ImportResult:
    validate_workload(workload)
    result = ImportResult()
    if fmt == "finetune":
        records = _finetune_records(path, workload, result)
    elif fmt == "batch":
        records = _batch_records(path, requests_path, workload, result)
    elif fmt == "csv":
        records = _mapped(path, workload, _csv_rows(path, prompt_field, answer_field), prompt_field, answer_field,
                          system_prompt, result)
    elif fmt == "jsonl":
        records = _mapped(path, workload, _jsonl_rows(path, result), prompt_field, answer_field, system_prompt,
                          result)
    elif fmt == "openai-chat":
        records = _openai_chat_records(path, workload, result)
    elif fmt == "dstc8":
        records = _dstc8_records(path, workload, result)
    else:
        raise ValueError(f"unknown format {fmt!r}: use finetune, batch, openai-chat, jsonl, csv or dstc8")
    before = store.workloads().get(workload, 0)
    handed = 0
    batch: list[dict] = []
    try:
        for exchange in records:
            batch.append(exchange_values(exchange))
            if len(batch) >= IMPORT_BATCH and not strict:  # strict: nothing is stored until all records are read
                handed += store.insert_rows(batch)
                batch = []
    except UnicodeDecodeError as exc:
        result.skipped.append(f"the rest of the file: undecodable bytes ({exc})")
    if strict and result.skipped:
        raise DistilleryError(f"{path}: {len(result.skipped)} of {result.read} records are bad, so nothing was "
                              f"imported (strict): {result.summary()}")
    for start in range(0, len(batch), IMPORT_BATCH):
        handed += store.insert_rows(batch[start : start + IMPORT_BATCH])
    result.imported = store.workloads().get(workload, 0) - before
    result.already_stored = handed - result.imported
    return result


def export_finetune_jsonl(store: LogStore, workload: str, path: Path) -> int:
    """The workload's successful exchanges as OpenAI fine-tuning JSONL; returns the line count."""
    rows = store.read(workload)
    rows = rows[(rows["status"] == STATUS_OK) & (rows["response_text"].notna() | rows["tool_calls"].notna())]
    with open(path, "w", encoding="utf-8") as out:
        for row in rows.itertuples():
            answer = {"role": "assistant", "content": row.response_text}
            if row.tool_calls:
                answer["tool_calls"] = row.tool_calls
            messages = [*row.request_messages, answer]
            out.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    return len(rows)
