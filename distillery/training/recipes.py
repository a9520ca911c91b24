"""Training recipes per task: the settings a workload's fine-tune starts from, chosen by measurement.

Extraction (``extraction_recipe``), measured with ``benchmarks/extraction.py`` (bundled SmolLM2-135M, 2-core
machine, 2026-12-03; slot F1 under grounded decoding):

- LoRA on the top 8 layers, not all 30: on RentalCars_1 (874 rows, 2-minute budget, 100 test rows) all layers ran
  30 steps of 16 (0.55 epochs) to slot F1 0.269, the top 8 ran 77 steps (1.41 epochs) to 0.425;
- learning rate 2e-3: 5e-3 in the same setting gave 0.415 against 0.425;
- epochs fall with the rows (``EXTRACTION_ROW_EPOCHS`` / rows, between 2 and 8), sized to fill the default
  10-minute budget at ~1.5 s a step: RentalCars_1 at 4.6 epochs (388 s) reached 0.753 on its 328 test rows, at
  1.4 epochs 0.425; the budget ends a larger workload's training first;
- the answer is serialized by ``tasks.serialize_answer`` (compact JSON, keys in schema order, absent fields left out), the
  spelling the grounded grammar writes, so training and decoding never disagree on the form of a record (not
  measured against another spelling);
- the loss covers the answer's tokens only (the trainer masks the prompt), as for every task (not measured
  against a loss over the prompt too).
"""

from __future__ import annotations

from distillery.tasks import EXTRACTION

EXTRACTION_SETTINGS = {  # the figures that chose them: the module's docstring
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
    return {**EXTRACTION_SETTINGS, "epochs": round(min(8.0, max(2.0, EXTRACTION_ROW_EPOCHS / max(rows, 1))), 2)}


def recipe_for(task: str, rows: int) -> dict:
    """The ``TrainingConfig`` settings a task's fine-tune starts from (the run's own settings win); classification,
    tool calls and free text use the defaults."""
    return extraction_recipe(rows) if task == EXTRACTION else {}
