"""What a workload's calls look like: its task kind, valid answers and how they are decoded, tool calls, confidence.

Shared by every stage that reads answers: curation (filters by task), evaluation (scores by task, decodes by policy),
serving (decodes by the same policy), the gateway's routes (what counts as a valid small-model answer) and live
monitoring. How a request's text is read, and what an answer's values rest on in it, is ``distillery.grounding``'s.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from distillery.grounding import check_copied_fields, grounded_grammar, uncopied_values, user_text

CLASSIFICATION, EXTRACTION, FREE_TEXT, TOOL_CALL = "classification", "extraction", "free_text", "tool_call"


def normalize_answer(text: str) -> str:
    """Exact match ignores case, surrounding whitespace and quotes, and a final period."""
    return re.sub(r"\s+", " ", text).strip().strip("\"'`").rstrip(".").strip().casefold()


def agrees(answer: str, reference: str) -> bool:
    """Equal after ``normalize_answer``, or, for two JSON objects, equal as values (key order and spacing aside)."""
    if normalize_answer(answer) == normalize_answer(reference):
        return True
    record = parse_record(answer)
    return record is not None and record == parse_record(reference)


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


def serialize_answer(record: dict, schema: dict | None = None) -> str:
    """A record as extraction trains on it: compact JSON, the schema's keys first and in its order, absent (null or
    empty) fields left out; nested objects the same way."""
    def ordered(value, node):
        if isinstance(value, dict):
            properties = (node or {}).get("properties") or {}
            keys = [k for k in properties if k in value] + [k for k in value if k not in properties]
            return {k: ordered(value[k], properties.get(k)) for k in keys if value[k] not in (None, "", [], {})}
        if isinstance(value, list):
            return [ordered(v, (node or {}).get("items")) for v in value]
        return value

    return json.dumps(ordered(record, schema), ensure_ascii=False, separators=(",", ":"))


# Tool calls. A tool-call workload's answer, as it is trained on, evaluated and decoded, is one JSON object that lists
# the calls with their arguments as JSON: {"tool_calls": [{"name": "route_ticket", "arguments": {"queue": "billing"}}]}.
# Provider shapes (chat completions' tool_calls with arguments as text, the Responses API's function_call items,
# Anthropic's tool_use blocks) are translated to and from it at the gateway.

def tool_call_answer(tool_calls) -> str | None:
    """The answer text of a call's function calls (chat completions' shape); None when a call's arguments are not a
    JSON object (the row is kept as the provider sent it, and never trained on)."""
    calls = []
    for call in tool_calls or ():
        try:
            function = call["function"]
            arguments = json.loads(function["arguments"]) if isinstance(function["arguments"], str) \
                else function["arguments"]
        except (KeyError, TypeError, json.JSONDecodeError):
            return None
        if not isinstance(arguments, dict) or not isinstance(function.get("name"), str):
            return None
        calls.append({"name": function["name"], "arguments": arguments})
    return json.dumps({"tool_calls": calls}, ensure_ascii=False, separators=(",", ":")) if calls else None


def tool_calls_of(answer: str) -> list[dict] | None:
    """The calls an answer text lists, as (name, arguments) dicts; None when it is not a tool-call answer."""
    record = parse_record(answer)
    calls = record.get("tool_calls") if record else None
    if not isinstance(calls, list) or not calls or not all(
            isinstance(c, dict) and isinstance(c.get("name"), str) and isinstance(c.get("arguments"), dict)
            for c in calls):
        return None
    return calls


@dataclass(frozen=True)
class ToolSpec:
    """The functions a request offers (name, parameters as JSON text), which it forces (``"required"``: any one;
    a function's name; ``"none"``: no call; None: the model chooses), and whether calls may come in parallel."""

    functions: tuple[tuple[str, str], ...]
    forced: str | None = None
    parallel: bool = True

    def schema(self, max_calls: int | None = None) -> dict | None:
        """The JSON schema of a tool-call answer for this request: one branch per function it may call, each with
        that function's parameters, at most ``max_calls`` calls (1 when the request forbids parallel calls); None when
        it may call none."""
        allowed = [(n, p) for n, p in self.functions if self.forced in (None, "required", n)]
        if not allowed:  # tool_choice "none", or a function it does not offer
            return None
        branches = [{"type": "object", "properties": {"name": {"const": name}, "arguments": json.loads(parameters)},
                     "required": ["name", "arguments"], "additionalProperties": False}
                    for name, parameters in allowed]
        most = 1 if not self.parallel else max_calls
        calls = {"type": "array", "items": branches[0] if len(branches) == 1 else {"anyOf": branches},
                 "minItems": 1, **({"maxItems": most} if most else {})}
        return {"type": "object", "properties": {"tool_calls": calls}, "required": ["tool_calls"],
                "additionalProperties": False}


def _parameters(value) -> str:
    schema = value if isinstance(value, dict) and value else {"type": "object"}
    return json.dumps(schema, sort_keys=True)


def tool_spec(params: dict) -> ToolSpec | None:
    """The tools of a request, whichever API it was made to (chat completions, Responses, Anthropic Messages); None
    when it offers none."""
    tools = params.get("tools") if isinstance(params, dict) else None
    if not isinstance(tools, list) or not tools:
        return None
    functions = []
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        if isinstance(tool.get("function"), dict):  # chat completions
            function = tool["function"]
            functions.append((function.get("name"), _parameters(function.get("parameters"))))
        elif tool.get("type") == "function":  # Responses
            functions.append((tool.get("name"), _parameters(tool.get("parameters"))))
        elif "input_schema" in tool:  # Anthropic
            functions.append((tool.get("name"), _parameters(tool.get("input_schema"))))
    functions = [(name, parameters) for name, parameters in functions if isinstance(name, str) and name]
    if not functions:
        return None
    choice, forced = params.get("tool_choice"), None
    if choice in ("none", "required"):
        forced = choice
    elif isinstance(choice, dict):
        kind = choice.get("type")
        name = (choice.get("function") or {}).get("name") if isinstance(choice.get("function"), dict) \
            else choice.get("name")
        forced = {"any": "required", "none": "none", "tool": name, "function": name}.get(kind)
    parallel = params.get("parallel_tool_calls") is not False and not (
        isinstance(choice, dict) and choice.get("disable_parallel_tool_use"))
    return ToolSpec(tuple(functions), forced, parallel)


POLICY_FILE = "decoding_policy.json"  # beside an adapter's weights: how its answers are decoded
# Whitespace a JSON answer may have between tokens: pretty-printed records fit, and a weak model cannot spend its
# whole token budget on blanks (with unbounded whitespace an untrained model did, 48 tokens of it).
JSON_WHITESPACE = r"[\n\r\t ]{0,24}"
# Tool-call answers are Distillery's own compact serialization (``tool_call_answer``): none at all. An untrained model
# spent a 64-token budget on blanks between the keys otherwise (tests/test_pipeline.py).
COMPACT_JSON = ""


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
    # Tool calls: answers are tool-call answers (``tool_call_answer``), decoded under the schema of each request's own
    # tools (``ToolSpec.schema``); ``json_schema`` is the one of the workload's newest traffic, for requests without.
    tool_calls: bool = False
    whitespace_pattern: str = JSON_WHITESPACE  # JSON answers: what may stand between two tokens
    # Grounded decoding: leaf fields (``grounding.leaf_fields`` paths) that copy the user's text, decoded as substrings
    # of each request's user text (``distillery.grounding``); the schema must declare them as strings.
    copied_fields: tuple[str, ...] = ()
    grammar: str | None = None  # one request's own llguidance Lark grammar (vLLM's ``structured_outputs.grammar``)

    def __post_init__(self) -> None:
        if self.copied_fields:  # refused here, naming the field, so no route or adapter ever carries such a policy
            check_copied_fields(json.loads(self.json_schema) if self.json_schema else None, self.copied_fields)

    @classmethod
    def for_task(cls, task: str, labels: list[str] | None = None, json_schema: dict | None = None,
                 copied_fields: list[str] | tuple[str, ...] = ()) -> "DecodingPolicy":
        if task == CLASSIFICATION:
            if not labels:
                raise ValueError("a classification workload's decoding policy needs its label set")
            return cls(labels=tuple(labels))
        if task in (EXTRACTION, TOOL_CALL):
            return cls(json_object=True, json_schema=json.dumps(json_schema) if json_schema else None,
                       tool_calls=task == TOOL_CALL, whitespace_pattern=COMPACT_JSON if task == TOOL_CALL
                       else JSON_WHITESPACE, copied_fields=tuple(copied_fields) if task == EXTRACTION else ())
        return cls()

    @property
    def kind(self) -> str:
        if self.grammar:
            return "grammar"
        return "labels" if self.labels else "tools" if self.tool_calls else "json" if self.json_object else "free"

    def request_grammar(self, messages) -> tuple[str | None, str | None]:
        """A grounded policy's Lark grammar for one request, and why there is none when it cannot be grounded (the
        request has no user text: the answer is then decoded under the schema alone, and its record says so)."""
        if not self.copied_fields:
            return self.grammar, None
        text = user_text(messages)
        if not text:
            return None, "not grounded: the request has no user text, so the copied fields were decoded under the " \
                         "schema alone"
        return grounded_grammar(json.loads(self.json_schema), self.copied_fields, text), None

    def for_request(self, spec: ToolSpec | None) -> "DecodingPolicy":
        """A tool-call policy narrowed to one request's tools and tool choice, with no more calls than the workload's
        own schema allows (itself for any other policy)."""
        if not self.tool_calls or spec is None:
            return self
        most = json.loads(self.json_schema)["properties"]["tool_calls"].get("maxItems") if self.json_schema else None
        schema = spec.schema(most)
        if schema is None:
            return self
        return DecodingPolicy(json_object=True, json_schema=json.dumps(schema, sort_keys=True), tool_calls=True,
                              whitespace_pattern=self.whitespace_pattern)

    def record(self) -> dict | None:
        """How the policy is stored (beside an adapter, in a route): its ``structured_outputs``, marked when its
        answers are tool calls and with its copied fields (neither mark goes to a server)."""
        constraint = self.structured_outputs()
        if constraint and self.tool_calls:
            return {**constraint, "tool_calls": True}
        return {**constraint, "copied": list(self.copied_fields)} if constraint and self.copied_fields else constraint

    def structured_outputs(self, messages=None) -> dict | None:
        """What a server is sent: for a grounded policy and a request's ``messages``, that request's grammar."""
        if self.labels:
            return {"choice": list(self.labels)}
        grammar = self.request_grammar(messages)[0] if messages is not None or self.grammar else None
        if grammar:
            return {"grammar": grammar}
        if self.json_object:
            schema = json.loads(self.json_schema) if self.json_schema else {"type": "object"}
            return {"json": schema, "whitespace_pattern": self.whitespace_pattern}
        return None

    @classmethod
    def from_structured_outputs(cls, params: dict | None) -> "DecodingPolicy":
        """The policy of a ``structured_outputs`` value; a ValueError names what is not supported."""
        if not params:
            return cls()
        if not isinstance(params, dict):
            raise ValueError("'structured_outputs' must be an object")
        if params.get("tool_calls") is True:
            policy = cls.from_structured_outputs({k: v for k, v in params.items() if k != "tool_calls"})
            return cls(json_object=True, json_schema=policy.json_schema, tool_calls=True,
                       whitespace_pattern=policy.whitespace_pattern)
        if isinstance(params.get("choice"), list) and params["choice"] and all(
                isinstance(label, str) and label for label in params["choice"]):
            return cls(labels=tuple(params["choice"]))
        if isinstance(params.get("json"), (dict, str)):
            schema = params["json"] if isinstance(params["json"], dict) else json.loads(params["json"])
            whitespace = params.get("whitespace_pattern", JSON_WHITESPACE)
            if not isinstance(whitespace, str):
                raise ValueError("'whitespace_pattern' must be a regular expression")
            copied = params.get("copied", [])
            if not isinstance(copied, list) or not all(isinstance(path, str) for path in copied):
                raise ValueError("'copied' must be a list of field paths")
            return cls(json_object=True, json_schema=None if schema == {"type": "object"} else json.dumps(schema),
                       whitespace_pattern=whitespace, copied_fields=tuple(copied))
        if isinstance(params.get("grammar"), str) and params["grammar"].strip():
            return cls(grammar=params["grammar"])
        if params.get("json_object") is True:
            return cls(json_object=True)
        raise ValueError("'structured_outputs' supports a non-empty 'choice' list of strings, 'json' (a JSON schema), "
                         f"'grammar' (llguidance Lark) or 'json_object': true; got {sorted(params)}")

    def save(self, folder: Path) -> None:
        (Path(folder) / POLICY_FILE).write_text(json.dumps({"structured_outputs": self.record()}))

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

    def valid_answer(self, text: str, messages=None) -> bool:
        """Whether an answer is one this policy allows (on the gateway's request path: the label set is
        normalized and the schema compiled once per policy); with the request's ``messages``, a grounded policy's
        copied values must also be copies of its user text (when it has any)."""
        if self.labels:
            return normalize_answer(text) in self._normalized_labels
        if self.json_object:
            record = parse_record(text)
            if record is None or (self.tool_calls and tool_calls_of(text) is None):
                return False
            try:
                if self._schema_validator is not None and not self._schema_validator.is_valid(record):
                    return False
            except Exception:  # noqa: BLE001 - a caller's tool schema that cannot be applied: nothing is valid
                return False
            if self.copied_fields and messages is not None:
                text = user_text(messages)
                return not text or not uncopied_values(record, self.copied_fields, text)
        return True


# A small-model answer's confidence, from the log-probabilities of the tokens its decoding chose (normalized over the
# tokens the decoding policy allowed at each step, as the engine and vLLM's grammar-masked logprobs both give them).
LABEL_PROBABILITY = "label_probability"  # classification: the chosen label's probability among the label set
SEQUENCE_PROBABILITY = "sequence_probability"  # JSON answers: the whole answer's probability
LOWEST_TOKEN_PROBABILITY = "lowest_token_probability"  # JSON answers: the probability of its least sure token
MEAN_TOKEN_PROBABILITY = "mean_token_probability"  # free text: the per-token geometric mean
CONFIDENCE_MEASURES = (LABEL_PROBABILITY, SEQUENCE_PROBABILITY, LOWEST_TOKEN_PROBABILITY, MEAN_TOKEN_PROBABILITY)


def confidence_measures(policy: DecodingPolicy) -> tuple[str, ...]:
    """The measures a policy's calibration chooses from (by measurement, on the validation split)."""
    if policy.labels:
        return (LABEL_PROBABILITY,)
    if policy.json_object:
        return (SEQUENCE_PROBABILITY, LOWEST_TOKEN_PROBABILITY)
    return (MEAN_TOKEN_PROBABILITY,)


def confidence(measure: str, token_logprobs: list[float]) -> float:
    """``measure`` of an answer whose chosen tokens had ``token_logprobs``: a probability in [0, 1]."""
    if not token_logprobs:
        return 0.0  # nothing to be sure of: an answer without log-probabilities is never covered
    if measure in (LABEL_PROBABILITY, SEQUENCE_PROBABILITY):
        return math.exp(sum(token_logprobs))
    if measure == LOWEST_TOKEN_PROBABILITY:
        return math.exp(min(token_logprobs))
    if measure == MEAN_TOKEN_PROBABILITY:
        return math.exp(sum(token_logprobs) / len(token_logprobs))
    raise ValueError(f"unknown confidence measure {measure!r}: use one of {', '.join(CONFIDENCE_MEASURES)}")


@dataclass(frozen=True)
class Cascade:
    """The small model answers a call when its answer's confidence (``measure``) is at least ``threshold``; the
    frontier answers the rest. Chosen on the validation split (``distillery.evaluation.cascade``), recorded beside
    the decoding policy in the eval report, and carried by the route the deployment sets."""

    threshold: float
    measure: str
    coverage: float | None = None  # the share of the test split it covered at evaluation, for the live comparison

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not 0 <= self.threshold <= 1:
            raise ValueError(f"a cascade threshold must be a number between 0 and 1, got {self.threshold!r}")
        if self.coverage is not None and not 0 <= self.coverage <= 1:
            raise ValueError(f"a cascade's coverage must be between 0 and 1, got {self.coverage!r}")
        if self.measure not in CONFIDENCE_MEASURES:
            raise ValueError(f"unknown confidence measure {self.measure!r}: use one of {', '.join(CONFIDENCE_MEASURES)}")

    def record(self) -> dict:
        return {"threshold": self.threshold, "measure": self.measure, "coverage": self.coverage}

    @classmethod
    def from_record(cls, record: dict | None) -> "Cascade | None":
        if not record:
            return None
        if not isinstance(record, dict) or not {"threshold", "measure"} <= set(record) <= {"threshold", "measure",
                                                                                           "coverage"}:
            raise ValueError(f"a cascade is {{'threshold': 0..1, 'measure': ..., 'coverage': 0..1}}, got {record!r}")
        return cls(record["threshold"], record["measure"], record.get("coverage"))
