"""What a student is: its kind, the card saved beside its weights, and the text an encoder student reads.

Three kinds of student can learn a workload (``training`` trains them, ``serving`` answers with them):

- ``generative``: a LoRA adapter on a causal LM that decodes its answer under the workload's decoding policy (labels,
  JSON, free text, tool calls). The only kind for free text and tool calls, and the fallback for everything.
- ``classifier``: an encoder with a sequence-classification head: one forward pass, a softmax over the label set.
  Its answer is the label; its confidence the label's probability (``tasks.LABEL_PROBABILITY``).
- ``span_tagger``: an encoder with a token-classification head tagging the user's words BIO over the workload's copied
  fields; its answer is the compact JSON object the generative student writes (``tasks.serialize_answer``), whose
  values are copies of the user's words by construction. Each word's tag probability is one "token" of its answer, so
  the JSON measures (``sequence_probability``, ``lowest_token_probability``) apply unchanged.

Every kind answers with its chosen "tokens'" log-probabilities (``serving.Generation.token_logprobs``), so the
cascade, the gateway's audits and the autopilot work on each the same way.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from distillery.grounding import CALLER_ROLES, message_text, user_text

GENERATIVE, CLASSIFIER, SPAN_TAGGER = "generative", "classifier", "span_tagger"
KINDS = (GENERATIVE, CLASSIFIER, SPAN_TAGGER)
CARD_FILE = "student.json"  # beside an encoder student's weights: what it is and how it reads and answers
OUTSIDE = "O"  # a span tagger's tag of a word in no field


@dataclass(frozen=True)
class StudentCard:
    """What an encoder student's folder holds: its kind, the base it was trained from, and what it answers with."""

    kind: str
    base_model: str
    max_seq_len: int
    labels: tuple[str, ...] = ()  # classifier: the label set, in the head's order
    fields: tuple[str, ...] = ()  # span tagger: the copied fields it tags, in schema order
    json_schema: str | None = None  # span tagger: the schema its answers are serialized under (JSON text)
    extra: dict = field(default_factory=dict)

    def save(self, folder: Path) -> None:
        record = asdict(self)
        record["labels"], record["fields"] = list(self.labels), list(self.fields)
        (Path(folder) / CARD_FILE).write_text(json.dumps(record, indent=2))

    @classmethod
    def load(cls, folder: Path) -> "StudentCard | None":
        """The card in ``folder``, or None for a generative student (a peft adapter carries none)."""
        path = Path(folder) / CARD_FILE
        if not path.exists():
            return None
        record = json.loads(path.read_text())
        return cls(**{**record, "labels": tuple(record.get("labels") or ()), "fields": tuple(record.get("fields") or ())})

    @property
    def tags(self) -> tuple[str, ...]:
        """A span tagger's tags: outside, then begin and inside of each field."""
        return (OUTSIDE, *(f"{prefix}-{name}" for name in self.fields for prefix in ("B", "I")))


def kind_of(folder: Path) -> str:
    card = StudentCard.load(folder)
    return card.kind if card else GENERATIVE


def classifier_text(messages) -> str:
    """What a classifier reads of a request: the caller's messages, not the instructions every call repeats."""
    return message_text(messages, CALLER_ROLES)


def tagger_text(messages) -> str:
    """What a span tagger tags: the user's text, the text a copied field copies (``grounding.user_text``)."""
    return user_text(messages)


def tagger_context(messages) -> str:
    """What a span tagger reads before the user's text, untagged: the assistant's earlier turns (what the dialogue just
    asked for tells a pickup date from a return date). The pair (context, text) is its input, the text the second
    segment."""
    return message_text(messages, CONTEXT_ROLES)


CONTEXT_ROLES = ("assistant", "tool")
