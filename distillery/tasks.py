"""What a workload's calls look like: its task kind, the part of a prompt that varies, and valid answers.

Shared by every stage that reads prompts or answers: curation (filters by task), evaluation
(scores by task), the gateway's routes (what counts as a valid small-model answer) and live
monitoring (drift of what callers write).
"""

from __future__ import annotations

import json
import re

CLASSIFICATION, EXTRACTION, FREE_TEXT = "classification", "extraction", "free_text"


def caller_text(messages: list[dict]) -> str:
    """What varies between calls of one workload: every message but the system prompt."""
    return "\n".join(m["content"] for m in messages if m["role"] != "system")


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
