"""The candidate students of a workload, trained side by side within one budget.

A candidate is a kind (``distillery.students``), a base model and the kind's settings (``TrainingConfig`` for the
generative student, ``EncoderConfig`` for the encoder students). A task kind has a default list (``default_candidates``):
classification tries the generative student and a classifier, extraction the generative student and a span tagger,
tool calls and free text the generative student alone. A run config may name its own list. ``check_candidates`` refuses
a list naming an unknown kind or setting, or a base that cannot be loaded, before anything trains, naming the entry;
``span_tagger_ruled_out`` says which field keeps a workload from a span tagger (one its users' words do not hold).

``train_candidate`` trains one into a folder; the candidates share one budget (``budget_seconds``: each gets the time
left divided among those still to train, so a candidate that ends early leaves its time to the rest).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from distillery.errors import DistilleryError
from distillery.grounding import field_schema, is_plain_string
from distillery.models import BUNDLED, BUNDLED_ENCODER, resolve_base_model
from distillery.students import CLASSIFIER, GENERATIVE, KINDS, SPAN_TAGGER
from distillery.tasks import CLASSIFICATION, EXTRACTION, DecodingPolicy
from distillery.training.encoders import EncoderConfig, train_classifier, train_span_tagger
from distillery.training.trainer import StepCallback, TrainingConfig, train_lora

CONFIGS = {GENERATIVE: TrainingConfig, CLASSIFIER: EncoderConfig, SPAN_TAGGER: EncoderConfig}


@dataclass(frozen=True)
class Candidate:
    kind: str
    base_model: str  # an alias (smollm2-135m-instruct, all-minilm-l6-v2), a transformers id, a folder or s3:// URL
    settings: dict = field(default_factory=dict)  # the kind's config fields this candidate sets
    name: str = ""  # unique in its list; default: the kind

    @property
    def label(self) -> str:
        return self.name or self.kind

    def record(self) -> dict:
        return {"name": self.label, "kind": self.kind, "base_model": self.base_model, "settings": self.settings}


def default_candidates(task: str, generative_base: str | None = None) -> list[Candidate]:
    """The candidates a task kind tries when the run names none; the generative student always, on ``generative_base``
    (the trainer resource's base model)."""
    generative = Candidate(GENERATIVE, generative_base or BUNDLED)
    if task == CLASSIFICATION:
        return [generative, Candidate(CLASSIFIER, BUNDLED_ENCODER)]
    if task == EXTRACTION:
        return [generative, Candidate(SPAN_TAGGER, BUNDLED_ENCODER)]
    return [generative]


def parse_candidates(records: list[dict], generative_base: str | None = None) -> list[Candidate]:
    """A run config's candidate list (``{"kind", "base_model"?, "settings"?, "name"?}`` each); DistilleryError naming
    the first entry that is not one."""
    candidates = []
    for number, record in enumerate(records, 1):
        if not isinstance(record, dict) or record.get("kind") not in KINDS:
            raise DistilleryError(f"candidate {number} ({record!r}): kind must be one of {', '.join(KINDS)}")
        default_base = generative_base or BUNDLED if record["kind"] == GENERATIVE else BUNDLED_ENCODER
        candidates.append(Candidate(record["kind"], record.get("base_model") or default_base,
                                    dict(record.get("settings") or {}), record.get("name") or ""))
    return candidates


def check_candidates(candidates: list[Candidate], task: str, policy: DecodingPolicy) -> tuple[list[Candidate],
                                                                                                dict[str, str]]:
    """The candidates that can learn the workload, and why each other one cannot (``{label: reason}``). Raises
    DistilleryError, naming the entry, for a list no run should start with: an unknown setting, a duplicate name, a
    base that cannot be loaded, or a kind that cannot answer the task at all."""
    from transformers import AutoConfig

    usable, ruled_out, seen = [], {}, set()
    for candidate in candidates:
        label = candidate.label
        if label in seen:
            raise DistilleryError(f"candidate {label!r} is named twice: give each its own name")
        seen.add(label)
        known = {item.name for item in dataclasses.fields(CONFIGS[candidate.kind])}
        if unknown := sorted(set(candidate.settings) - known):
            raise DistilleryError(f"candidate {label!r}: unknown {candidate.kind} setting(s) {', '.join(unknown)}; "
                                  f"known: {', '.join(sorted(known))}")
        try:
            CONFIGS[candidate.kind](**candidate.settings)
        except (TypeError, ValueError) as exc:
            raise DistilleryError(f"candidate {label!r}: {exc}") from exc
        try:
            AutoConfig.from_pretrained(resolve_base_model(candidate.base_model))
        except (OSError, ValueError, DistilleryError) as exc:
            raise DistilleryError(f"candidate {label!r}: base model {candidate.base_model!r} cannot be loaded: "
                                  f"{exc}") from exc
        if candidate.kind == CLASSIFIER and task != CLASSIFICATION:
            raise DistilleryError(f"candidate {label!r}: a classifier answers classification workloads, this one is "
                                  f"{task}")
        if candidate.kind == SPAN_TAGGER:
            reason = span_tagger_ruled_out(task, policy)
            if reason:
                ruled_out[label] = reason
                continue
        usable.append(candidate)
    return usable, ruled_out


def span_tagger_ruled_out(task: str, policy: DecodingPolicy) -> str | None:
    """Why a span tagger cannot answer this workload (None: it can): it copies every field of its answers from the
    user's words, so each of the schema's fields must be a copied plain string outside any list."""
    if task != EXTRACTION:
        return f"a span tagger answers extraction workloads, this one is {task}"
    if not policy.json_schema:
        return "the workload has no JSON schema: a span tagger needs its fields"
    schema = json.loads(policy.json_schema)
    fields = _leaf_paths(schema)
    for path in fields:
        if path not in policy.copied_fields:
            return f"field {path!r} is not copied from the user's text, so a span tagger cannot answer it"
        if "[]" in path or not is_plain_string(field_schema(schema, path)):
            return f"field {path!r} is not a plain string outside a list, so a span tagger cannot answer it"
    return None if fields else "the workload's schema has no fields"


def _leaf_paths(schema: dict, path: str = "") -> list[str]:
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not properties:
        return [path] if path else []
    return [leaf for key, inner in properties.items() for leaf in _leaf_paths(inner, f"{path}.{key}" if path else key)]


def tagged_fields(policy: DecodingPolicy) -> tuple[str, ...]:
    """A span tagger's fields: the schema's leaves, in schema order."""
    return tuple(_leaf_paths(json.loads(policy.json_schema)))


# With a time share, an encoder student trains until the share ends; its epochs only cap it. Its default 3 epochs ended
# a span tagger on RentalCars_1's 674 rows after 27 of its 296 s (slot F1 0.54; the generative student 0.64), and the
# Banking77 classifier after 340 of its 446 s (test 0.9127, coverage 0.556; its whole share: 0.9188), 2026-12-08.
BUDGETED_ENCODER_EPOCHS = 20.0


def candidate_config(candidate: Candidate, budget_seconds: float, recipe: dict | None = None):
    """The candidate's whole config: the task's recipe (``training.recipes``, generative only), its share of the
    budget (``budget_seconds``; 0: its own settings decide; an encoder student then trains until the share ends, up
    to ``BUDGETED_ENCODER_EPOCHS``), then its own settings."""
    budget = {"max_seconds": budget_seconds} if budget_seconds else {}
    if budget and candidate.kind != GENERATIVE:
        budget["epochs"] = BUDGETED_ENCODER_EPOCHS
    return CONFIGS[candidate.kind](**{**((recipe or {}) if candidate.kind == GENERATIVE else {}), **budget,
                                      **candidate.settings})


def train_candidate(candidate: Candidate, config, train, validation, output_dir: Path, policy: DecodingPolicy,
                    on_step: StepCallback | None = None, checkpoint_dir: Path | None = None, log=lambda message: None):
    """Train one candidate under ``config`` (``candidate_config``) into ``output_dir``; returns its training result
    (``TrainingResult`` or ``EncoderResult``)."""
    base = resolve_base_model(candidate.base_model)
    if candidate.kind == GENERATIVE:
        result = train_lora(train, validation, base, output_dir, config, on_step=on_step, checkpoint_dir=checkpoint_dir,
                            labels=list(policy.labels) or None, log=log)
        policy.save(output_dir)  # evaluation, the model server and the gateway decode by it
        return result
    rows = [{"messages": row["messages"]} for row in train]
    checks = [{"messages": row["messages"]} for row in validation]
    if candidate.kind == CLASSIFIER:
        result = train_classifier(rows, checks, base, list(policy.labels), output_dir, config, on_step)
    else:
        result = train_span_tagger(rows, checks, base, tagged_fields(policy), json.loads(policy.json_schema),
                                   output_dir, config, on_step)
    policy.save(output_dir)  # the policy its answers are held to at the gateway
    return result
