"""What an answer's values rest on in the request: the reading of a request's text, an answer's leaf fields, the two
groundedness measures, and grounded decoding.

**Reading.** ``message_text`` reads the text of a request's messages (string contents and text parts; whatever else a
caller may send is skipped), of some roles only when asked: ``user_text`` is what a copied field may copy,
``CALLER_ROLES`` what varies between a workload's calls (every message but the instructions). ``leaf_fields`` lists a
JSON answer's leaves by path.

**Two measures, two names.**

- ``uncopied_values``: the copied fields' values that are not a run of whole words of the user's text. The grammar's
  own reading: a grounded answer has none (``DecodingPolicy.valid_answer`` checks it at the gateway;
  ``benchmarks/extraction.py`` reports it as ``uncopied_value_rate``).
- ``unsupported_values``: the leaf values of any JSON answer that do not occur anywhere in the request's text, case,
  blanks and quotes folded. A looser reading that needs no copied fields (a value may come from the instructions, an
  earlier turn, the requested slots); the eval report (``unsupported_value_rate``), the gateway's rollback window and
  the hallucination monitor (``unsupported_value_share``) report it.

**Grounded decoding.** A decoding policy marks the workload's *copied* fields (curation measures which:
``curation.copy_rates``). For each request, ``grounded_grammar`` writes an llguidance Lark grammar for the answer: the
workload's JSON schema, compact, keys in schema order, in which every copied string field is a substring of the
request's user text made of whole words (``copy_chunks``), JSON-escaped, beginning and ending on a word. A model
decoding under it cannot invent or misspell a copied value. Numbers, enums and every field not copied keep their schema (``%json``). The same grammar
text goes to vLLM as ``structured_outputs={"grammar": ...}`` (its llguidance backend) and to the engine's matchers.
"""

from __future__ import annotations

import json
import re
from collections import Counter

_CHUNK = re.compile(r"\w+|\s+|[^\w\s]")
USER_ROLES = ("user",)
# What varies between a workload's calls: not the instructions (system, developer), which every call repeats.
CALLER_ROLES = ("user", "assistant", "tool")


def message_text(messages, roles: tuple[str, ...] | None = None) -> str:
    """The text of a request's messages (of ``roles`` only, when given), one message a line: string contents and the
    text of content parts. Tolerant of what a caller may send: non-dict messages and other contents are skipped."""
    texts = []
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, dict) or (roles is not None and message.get("role") not in roles):
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts += [part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)]
    return "\n".join(texts)


def user_text(messages) -> str:
    """The text of a request's user messages: what a copied field may copy."""
    return message_text(messages, USER_ROLES)


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


def unsupported_values(record: dict | None, prompt: str) -> tuple[int, int]:
    """(leaf values not found in ``prompt``, leaf values) of a JSON answer, case, blanks and quotes folded; true and
    false are judgements, not quotes of the prompt, and do not count. No record (not JSON) has none."""
    haystack = _folded(prompt)
    missing = total = 0
    for (_, encoded), count in leaf_fields(record or {}).items():
        value = json.loads(encoded)
        if isinstance(value, bool):
            continue
        total += count
        missing += count * (_folded(str(value)) not in haystack)
    return missing, total


def uncopied_values(record: dict, copied: tuple[str, ...], text: str) -> list[str]:
    """The copied fields' values in an answer that are not a run of whole pieces (``copy_chunks``) of ``text`` that
    begins and ends on a word."""
    def pieces(value: str) -> str:
        return "\x00" + "\x00".join(_CHUNK.findall(value)) + "\x00"

    haystack = pieces(text)
    return [value for (path, encoded), _ in leaf_fields(record).items()
            if path in copied and isinstance(value := json.loads(encoded), str)
            and (pieces(value) not in haystack or value != value.strip())]


def copy_chunks(text: str) -> list[str]:
    """The pieces a copied value is made of: words, runs of blanks and single punctuation marks, each JSON-escaped.
    A value is a run of whole pieces: every labelled span of the four DSTC8 domains is one (2,667 of 2,667)."""
    return [json.dumps(chunk, ensure_ascii=False)[1:-1] for chunk in _CHUNK.findall(text)]


def field_schema(schema: dict, path: str) -> dict | None:
    """The subschema of a ``leaf_fields`` path (``slots.city``, ``intents[]``), or None when it has none."""
    node: dict | None = schema
    for step in re.findall(r"[^.\[\]]+|\[\]", path):
        if not isinstance(node, dict):
            return None
        node = node.get("items") if step == "[]" else (node.get("properties") or {}).get(step)
    return node if isinstance(node, dict) else None


def is_plain_string(schema: dict | None) -> bool:
    """A string field free to take any text: what a copied field must be (an enum or a pattern keeps its schema)."""
    return isinstance(schema, dict) and schema.get("type") == "string" and not (
        {"enum", "const", "pattern", "format"} & set(schema))


def check_copied_fields(schema: dict | None, fields: tuple[str, ...]) -> None:
    """A ValueError naming the first copied field the schema does not declare as a plain string."""
    if not fields:
        return
    if not schema:
        raise ValueError(f"copied fields {list(fields)} need the workload's JSON schema")
    for path in fields:
        if not is_plain_string(field_schema(schema, path)):
            raise ValueError(f"copied field {path!r} is not a string in the workload's JSON schema "
                             f"(got {field_schema(schema, path)!r}): only string fields can be copied")


def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


class _Writer:
    """Writes the Lark rules of a schema whose ``copied`` fields are substrings of the user text (``COPIED``)."""

    def __init__(self, copied: set[str]):
        self.copied = copied
        self.rules: list[str] = []

    def _copies_under(self, path: str) -> bool:
        return any(field.startswith(f"{path}." if path else "") or field.startswith(f"{path}[]")
                   for field in self.copied)

    def value(self, schema: dict, path: str) -> str:
        """A copy, a list or an object written out when copied fields lie inside it, else the schema (``%json``)."""
        if path in self.copied:
            return "COPIED"
        if schema.get("type") == "array" and isinstance(schema.get("items"), dict) and self._copies_under(path) \
                and not {"minItems", "maxItems", "uniqueItems", "prefixItems"} & set(schema):
            element = self.value(schema["items"], f"{path}[]")
            return f'"[" ({element} ("," {element})*)? "]"'
        if schema.get("properties") and self._copies_under(path):
            return self.object(schema, path)
        return f"%json {json.dumps(schema, ensure_ascii=False)}"

    def object(self, schema: dict, path: str) -> str:
        """An object's rule: its properties in schema order, each at most once, the required ones always, the others
        left out when absent (additional properties are not written)."""
        name = f"object_{len(self.rules)}"
        self.rules.append("")  # the name is taken before the properties add their own rules
        slot = len(self.rules) - 1
        properties = schema["properties"]
        keys, required = list(properties), set(schema.get("required") or ())
        pairs = [f"{_literal(_literal(key) + ':')} {self.value(properties[key], f'{path}.{key}' if path else key)}"
                 for key in keys]

        def next_of(first: int, separator: str) -> str:
            """Any one property from ``first`` on, up to the first required one, and what may follow it."""
            options = []
            for index in range(first, len(keys)):
                options.append(f"{separator}{pairs[index]}{after[index]}")
                if keys[index] in required:
                    return f"({' | '.join(options)})"
            return f"({' | '.join(options)})?" if options else ""

        comma = '"," '
        after = [f" {name}_after_{index}" if index < len(keys) - 1 else "" for index in range(len(keys))]
        for index in range(len(keys) - 1):
            self.rules.append(f"{name}_after_{index}: {next_of(index + 1, comma)}")
        self.rules[slot] = f'{name}: "{{" {next_of(0, "")} "}}"'
        return name


# A copied value begins and ends on a word of the user's text, not on a blank between two (``" Fri, 24 Aug"`` was
# decoded, and scored a miss, before): over the value's JSON-escaped text, a first and last unit that is not a space
# or an escaped blank (``\n``, ``\t``, ``\r``), anything between. Intersected (``&``) with the substring lexeme.
_NO_EDGE_BLANK = r"/(?:[^ \\]|\\[^ntr])(?:(?:[^\\]|\\.)*(?:[^ \\]|\\[^ntr]))?/"


def grounded_grammar(schema: dict, copied: tuple[str, ...], text: str) -> str:
    """The Lark grammar of an answer to a request whose user text is ``text`` (see the module's docstring)."""
    writer = _Writer(set(copied))
    start = writer.object(schema, "")
    chunks = json.dumps({"substring_chunks": copy_chunks(text)}, ensure_ascii=False)
    return "\n".join([f"start: {start}", *writer.rules, 'COPIED: "\\"" COPY "\\""',
                      f"COPY: %regex {chunks} & {_NO_EDGE_BLANK}"])
