"""Training recipes per task: the settings a workload's fine-tune starts from, chosen by measurement.

Extraction (``extraction_recipe``; measured with ``benchmarks/extraction.py`` on the DSTC8 domains, bundled
SmolLM2-135M, 2-core machine):

- the answer is serialized by ``serialize_answer``: compact JSON, keys in schema order, absent fields left out, so
  every training answer spells a record one way and decoding (the grounded grammar writes the same form) never has
  to choose between spellings;
- the loss covers the answer's tokens only (the trainer masks the prompt), as for every task;
- epochs fall with the number of rows (``EXTRACTION_ROW_EPOCHS``), between 2 and 6: small sets need more passes,
  and the time budget ends large ones first;
- learning rate and LoRA layers: see the figures beside ``EXTRACTION``.
"""

from __future__ import annotations

import json

from distillery.tasks import EXTRACTION

# Settings for extraction fine-tunes; figures from benchmarks/extraction.py (see the README's "Extraction").
EXTRACTION = {
    "learning_rate": 2e-3,
    "lora_layers": 8,
    "rank": 16,
    "alpha": 32,
    "dropout": 0.0,
    "warmup_fraction": 0.03,
    "batch_size": 16,
    "max_seq_len": 256,
}
EXTRACTION_ROW_EPOCHS = 6000  # epochs = this / training rows, clamped to [2, 8]


def extraction_recipe(rows: int) -> dict:
    """``TrainingConfig`` settings for an extraction workload of ``rows`` training rows."""
    return {**EXTRACTION, "epochs": round(min(8.0, max(2.0, EXTRACTION_ROW_EPOCHS / max(rows, 1))), 2)}


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


def recipe_for(task: str, rows: int) -> dict:
    """The ``TrainingConfig`` settings a task's fine-tune starts from (the run's own settings win); classification,
    tool calls and free text use the defaults."""
    return extraction_recipe(rows) if task == EXTRACTION else {}
