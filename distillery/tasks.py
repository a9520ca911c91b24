"""What a workload's calls look like: its task kind, the part of a prompt that varies, and valid answers.

Shared by every stage that reads prompts or answers: curation (filters by task), evaluation
(scores by task, decodes by policy), serving (decodes by the same policy), the gateway's routes
(what counts as a valid small-model answer, how much of it the prompt grounds) and live monitoring
(drift of what callers write, hallucination).
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

CLASSIFICATION, EXTRACTION, FREE_TEXT = "classification", "extraction", "free_text"


def caller_text(messages: list[dict]) -> str:
    """What varies between calls of one workload: every message but the system prompt."""
    return "\n".join(m["content"] for m in messages if m["role"] != "system")


def prompt_text(messages) -> str:
    """Every message's text, system prompt included (a value may be grounded in the context: requested slots,
    earlier turns); tolerant of what a caller may send: non-dict messages and non-text contents are skipped."""
    if not isinstance(messages, list):
        return ""
    return "\n".join(m["content"] for m in messages if isinstance(m, dict) and isinstance(m.get("content"), str))


def normalize_answer(text: str) -> str:
    """Exact match ignores case, surrounding whitespace and quotes, and a final period."""
    return re.sub(r"\s+", " ", text).strip().strip("\"'`").rstrip(".").strip().casefold()


def agrees(answer: str, reference: str) -> bool:
    return normalize_answer(answer) == normalize_answer(reference)


def parse_record(text: str) -> dict | None:
    """The answer as a JSON object, or None when it is not one (a fenced ```json block is accepted)."""
    text = text.strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def leaf_fields(value, path: str = "") -> Counter:
    """A JSON value's leaves as a multiset of (dotted path, JSON-encoded value).

    ``{"slots": {"city": "Paris"}, "intents": ["book", "pay"]}`` has the leaves ``("slots.city", '"Paris"')``,
    ``("intents[]", '"book"')`` and ``("intents[]", '"pay"')``; a list of objects puts its elements' leaves under
    ``path[].``. Empty values (null, "", [], {}) are absent.
    """
    leaves: Counter = Counter()
    if isinstance(value, dict):
        for key, inner in value.items():
            leaves += leaf_fields(inner, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for element in value:
            leaves += leaf_fields(element, f"{path}[]")
    elif value is not None and value != "":
        leaves[(path, json.dumps(value))] += 1
    return leaves


def _folded(text: str) -> str:
    return " ".join(text.casefold().replace('"', " ").replace("'", " ").split())


def ungrounded(answer: str, prompt: str) -> tuple[int, int]:
    """(values not found in the prompt, values) over a JSON answer's leaf values, case, whitespace and quotes
    folded; true/false are judgements, not quotes of the prompt, and do not count. An unparsable answer has none."""
    haystack = _folded(prompt)
    missing = total = 0
    for (_, encoded), count in leaf_fields(parse_record(answer) or {}).items():
        value = json.loads(encoded)
        if isinstance(value, bool):
            continue
        total += count
        missing += count * (_folded(str(value)) not in haystack)
    return missing, total


POLICY_FILE = "decoding_policy.json"  # beside an adapter's weights: how its answers are decoded
# Whitespace a JSON answer may have between tokens: pretty-printed records fit, and a weak model cannot spend its
# whole token budget on blanks (with unbounded whitespace an untrained model did, 48 tokens of it).
JSON_WHITESPACE = r"[\n\r\t ]{0,24}"


@dataclass(frozen=True)
class DecodingPolicy:
    """How a workload's answers are decoded, the same in evaluation, in the local server and through vLLM.

    Classification: exactly one of ``labels``. Extraction: a JSON object, valid against ``json_schema`` when the
    workload has one. Free text otherwise. Its wire form is vLLM's ``structured_outputs`` parameter
    (``{"choice": [...]}`` or ``{"json": schema, "whitespace_pattern": ...}``; None for free text), which the
    gateway sends with every small-model call and the local server reads the same way (it also takes
    ``{"json_object": true}``).
    """

    labels: tuple[str, ...] = ()
    json_object: bool = False
    json_schema: str | None = None  # JSON text, so the policy stays hashable

    @classmethod
    def for_task(cls, task: str, labels: list[str] | None = None, json_schema: dict | None = None) -> "DecodingPolicy":
        if task == CLASSIFICATION:
            if not labels:
                raise ValueError("a classification workload's decoding policy needs its label set")
            return cls(labels=tuple(labels))
        if task == EXTRACTION:
            return cls(json_object=True, json_schema=json.dumps(json_schema, sort_keys=True) if json_schema else None)
        return cls()

    @property
    def kind(self) -> str:
        return "labels" if self.labels else "json" if self.json_object else "free"

    def structured_outputs(self) -> dict | None:
        if self.labels:
            return {"choice": list(self.labels)}
        if self.json_object:
            schema = json.loads(self.json_schema) if self.json_schema else {"type": "object"}
            return {"json": schema, "whitespace_pattern": JSON_WHITESPACE}
        return None

    @classmethod
    def from_structured_outputs(cls, params: dict | None) -> "DecodingPolicy":
        """The policy of a ``structured_outputs`` value; a ValueError names what is not supported."""
        if not params:
            return cls()
        if not isinstance(params, dict):
            raise ValueError("'structured_outputs' must be an object")
        if isinstance(params.get("choice"), list) and params["choice"] and all(
                isinstance(label, str) and label for label in params["choice"]):
            return cls(labels=tuple(params["choice"]))
        if isinstance(params.get("json"), (dict, str)):
            schema = params["json"] if isinstance(params["json"], dict) else json.loads(params["json"])
            if schema == {"type": "object"}:
                return cls(json_object=True)
            return cls(json_object=True, json_schema=json.dumps(schema, sort_keys=True))
        if params.get("json_object") is True:
            return cls(json_object=True)
        raise ValueError("'structured_outputs' supports a non-empty 'choice' list of strings, 'json' (a JSON schema) "
                         f"or 'json_object': true; got {sorted(params)}")

    def save(self, folder: Path) -> None:
        (Path(folder) / POLICY_FILE).write_text(json.dumps({"structured_outputs": self.structured_outputs()}))

    @classmethod
    def load(cls, folder: Path) -> "DecodingPolicy | None":
        """The policy saved beside an adapter, or None when there is none."""
        path = Path(folder) / POLICY_FILE
        if not path.exists():
            return None
        return cls.from_structured_outputs(json.loads(path.read_text())["structured_outputs"])

    @functools.cached_property
    def _normalized_labels(self) -> frozenset[str]:
        return frozenset(normalize_answer(label) for label in self.labels)

    @functools.cached_property
    def _schema_validator(self):
        import jsonschema

        return jsonschema.Draft202012Validator(json.loads(self.json_schema)) if self.json_schema else None

    def valid_answer(self, text: str) -> bool:
        """Whether an answer is one this policy allows (on the gateway's request path: the label set is
        normalized and the schema compiled once per policy)."""
        if self.labels:
            return normalize_answer(text) in self._normalized_labels
        if self.json_object:
            record = parse_record(text)
            return record is not None and (self._schema_validator is None or self._schema_validator.is_valid(record))
        return True
