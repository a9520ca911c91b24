"""Encoder students: a classifier (sequence classification) and a span tagger (token classification, BIO over the
copied fields) on an encoder such as the bundled all-MiniLM-L6-v2, each answering in one forward pass.

Both train with one loop (``_fit``): batches of similar length, AdamW, warmup then the schedule, decaying over whichever
of the epochs or the time budget ends first, like the generative trainer. Full fine-tuning by default; ``lora_rank``
trains LoRA on the encoder's linear layers and the head in full, then merges it, so every encoder student is saved
as one plain transformers folder with its card (``distillery.students.StudentCard``) and its tokenizer.

Settings measured on Banking77 (issue 35, 2-core CPU, MiniLM, 8 minutes): full fine-tuning at learning rate 4e-4,
batch 32, max length 64, cosine, about 3 epochs reached accuracy 0.914 on the 3,080 test rows; the same at 1e-4 reached
0.855. ``benchmarks/banking77.py --students`` measures the defaults against the generative student.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from distillery.errors import DistilleryError
from distillery.grounding import copy_chunks, leaf_fields
from distillery.models import load_tokenizer
from distillery.settings import setting
from distillery.students import (CLASSIFIER, OUTSIDE, SPAN_TAGGER, StudentCard, classifier_text, tagger_context,
                                 tagger_text)
from distillery.tasks import parse_record
from distillery.training.trainer import IGNORE_INDEX, SCHEDULES, StepCallback, length_grouped_batches



@dataclass
class EncoderConfig:
    """An encoder student's fine-tune."""

    learning_rate: float = setting(4e-4, "Peak learning rate (full fine-tuning: 4e-4 beat 1e-4 by 6 points on "
                                   "Banking77).")
    lr_schedule: str = setting("cosine", "cosine, linear or constant, after the warmup.")
    warmup_fraction: float = setting(0.06, "The share of the schedule spent warming up.")
    weight_decay: float = setting(0.01, "AdamW's weight decay.")
    epochs: float = setting(3.0, "Passes over the training split.")
    max_seconds: float = setting(0, "A time budget in seconds; the schedule decays over whichever of epochs or time "
                                 "ends first; 0: none.")
    batch_size: int = setting(32, "Examples per step.")
    max_seq_len: int = setting(64, "Tokens an example is cut to (a span past it is not tagged).")
    lora_rank: int = setting(0, "0: full fine-tuning; N: LoRA of rank N on the encoder's linear layers (the head in "
                             "full), merged into the saved model.")
    seed: int = setting(0, "Seed of the head's initialization and the batch order.")

    def __post_init__(self) -> None:
        if self.lr_schedule not in SCHEDULES:
            raise DistilleryError(f"lr_schedule must be one of {sorted(SCHEDULES)}, not {self.lr_schedule!r}")


@dataclass
class EncoderResult:
    steps: int
    train_examples: int
    seconds: float
    final_train_loss: float
    validation_loss: float | None
    loss_curve: list[tuple[int, float]]
    device: str = "cpu"
    skipped: dict[str, int] = field(default_factory=dict)  # examples left out, by reason


def train_classifier(train: list[dict], validation: list[dict], base_model: str, labels: list[str],
                     output_dir: Path, config: EncoderConfig, on_step: StepCallback | None = None) -> EncoderResult:
    """A classifier over ``labels`` on ``base_model`` from chat examples (the assistant's answer is the label), saved
    into ``output_dir``. An answer outside ``labels`` is counted and left out."""
    from transformers import AutoModelForSequenceClassification

    tokenizer = load_tokenizer(base_model)
    index = {label: i for i, label in enumerate(labels)}
    skipped: Counter = Counter()

    def encode(rows: list[dict]) -> list[dict]:
        examples = []
        for row in rows:
            messages = row["messages"]
            label = index.get(messages[-1]["content"].strip())
            if label is None:
                skipped["answer outside the label set"] += 1
                continue
            ids = tokenizer(classifier_text(messages[:-1]), truncation=True, max_length=config.max_seq_len)["input_ids"]
            examples.append({"input_ids": ids, "labels": label})
        return examples

    torch.manual_seed(config.seed)
    # float32 whatever the base was saved in: a half-precision copy trains unstably and slowly on CPUs.
    model = AutoModelForSequenceClassification.from_pretrained(
        base_model, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=index, dtype=torch.float32)
    card = StudentCard(CLASSIFIER, base_model, config.max_seq_len, labels=tuple(labels))
    return _fit(model, tokenizer, encode(train), encode(validation), card, output_dir, config, on_step, skipped,
                task_type="SEQ_CLS")


def span_examples(rows: list[dict], fields: tuple[str, ...], tokenizer, max_seq_len: int,
                  skipped: Counter) -> list[dict]:
    """BIO-tagged examples: each copied field's value found as a run of whole pieces of the user's text; a field whose
    value is not there is counted (``skipped``) and the row kept with that field untagged."""
    tag_ids = {tag: i for i, tag in enumerate(StudentCard("", "", 0, fields=fields).tags)}
    examples = []
    for row in rows:
        messages = row["messages"]
        text = tagger_text(messages[:-1])
        encoded = tokenizer(tagger_context(messages[:-1]), text, truncation=True, max_length=max_seq_len,
                            return_offsets_mapping=True)
        # the user's text is the second segment; the context's words are read, never tagged
        word_ids = [word if segment == 1 else None for word, segment in zip(encoded.word_ids(), encoded.sequence_ids())]
        labels = [IGNORE_INDEX] * len(encoded["input_ids"])
        for position, word in enumerate(word_ids):  # the first piece of each word carries its tag
            if word is not None and (position == 0 or word_ids[position - 1] != word):
                labels[position] = tag_ids[OUTSIDE]
        values = {path: json.loads(encoded_value) for (path, encoded_value), _ in
                  leaf_fields(parse_record(messages[-1]["content"]) or {}).items()}
        for name in fields:
            value = values.get(name)
            if not isinstance(value, str):
                continue
            start = _whole_pieces_at(text, value)
            if start is None:
                skipped["value not a copy of the user's words"] += 1
                continue
            first = True
            for position, (word, (begin, end)) in enumerate(zip(word_ids, encoded["offset_mapping"])):
                if word is None or labels[position] == IGNORE_INDEX or end <= start or begin >= start + len(value):
                    continue
                labels[position] = tag_ids[f"{'B' if first else 'I'}-{name}"]
                first = False
            if first:
                skipped["value past max_seq_len"] += 1
        examples.append({"input_ids": encoded["input_ids"], "labels": labels})
    return examples


def _whole_pieces_at(text: str, value: str) -> int | None:
    """Where ``value`` first stands in ``text`` as a run of whole pieces (``grounding.copy_chunks``), or None."""
    pieces = [json.loads(f'"{chunk}"') for chunk in copy_chunks(text)]
    starts, offset = [], 0
    for piece in pieces:
        starts.append(offset)
        offset += len(piece)
    boundaries = set(starts) | {len(text)}
    position = text.find(value)
    while position != -1:
        if position in boundaries and position + len(value) in boundaries:
            return position
        position = text.find(value, position + 1)
    return None


def train_span_tagger(train: list[dict], validation: list[dict], base_model: str, fields: tuple[str, ...],
                      json_schema: dict | None, output_dir: Path, config: EncoderConfig,
                      on_step: StepCallback | None = None) -> EncoderResult:
    """A BIO span tagger over the copied ``fields`` on ``base_model`` from chat examples (the assistant's answer is the
    JSON object), saved into ``output_dir``."""
    from transformers import AutoModelForTokenClassification

    tokenizer = load_tokenizer(base_model)
    if not tokenizer.is_fast:
        raise DistilleryError(f"a span tagger needs a fast tokenizer (word offsets); {base_model} has none")
    card = StudentCard(SPAN_TAGGER, base_model, config.max_seq_len, fields=tuple(fields),
                       json_schema=json.dumps(json_schema) if json_schema else None)
    skipped: Counter = Counter()
    train_examples = span_examples(train, card.fields, tokenizer, config.max_seq_len, skipped)
    validation_examples = span_examples(validation, card.fields, tokenizer, config.max_seq_len, Counter())
    torch.manual_seed(config.seed)
    model = AutoModelForTokenClassification.from_pretrained(
        base_model, num_labels=len(card.tags), id2label=dict(enumerate(card.tags)),
        label2id={tag: i for i, tag in enumerate(card.tags)}, dtype=torch.float32)
    return _fit(model, tokenizer, train_examples, validation_examples, card, output_dir, config, on_step, skipped,
                task_type="TOKEN_CLS")


def _collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e["input_ids"]) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    token_level = isinstance(examples[0]["labels"], list)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long) if token_level \
        else torch.tensor([e["labels"] for e in examples], dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        input_ids[row, :n] = torch.tensor(example["input_ids"])
        attention[row, :n] = 1
        if token_level:
            labels[row, :n] = torch.tensor(example["labels"])
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def _fit(model, tokenizer, train: list[dict], validation: list[dict], card: StudentCard, output_dir: Path,
         config: EncoderConfig, on_step: StepCallback | None, skipped: Counter,
         task_type: str) -> EncoderResult:
    if not train:
        raise DistilleryError(f"no training example for the {card.kind} student: {skipped}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if config.lora_rank:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type=task_type, r=config.lora_rank, lora_alpha=2 * config.lora_rank,
                                                 target_modules="all-linear"))
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    total_steps = max(1, math.ceil(len(train) / config.batch_size * config.epochs))
    warmup_steps = int(total_steps * config.warmup_fraction)
    lengths = [len(example["input_ids"]) for example in train]
    curve: list[tuple[int, float]] = []
    step, epoch, started = 0, 0, time.perf_counter()

    def learning_rate_now(seconds: float) -> float:
        if step < warmup_steps:
            return config.learning_rate * (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if config.max_seconds:
            progress = max(progress, seconds / config.max_seconds)
        return config.learning_rate * SCHEDULES[config.lr_schedule](min(1.0, progress))

    done = False
    while not done:
        for batch_ids in length_grouped_batches(lengths, config.batch_size, random.Random(config.seed + epoch)):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate_now(time.perf_counter() - started)
            batch = {k: v.to(device) for k, v in _collate([train[i] for i in batch_ids], tokenizer.pad_token_id).items()}
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            curve.append((step, loss.item()))
            if on_step:
                on_step(step, total_steps, curve[-1][1])
            seconds = time.perf_counter() - started
            if step >= total_steps or (config.max_seconds and seconds >= config.max_seconds):
                done = True
                break
        epoch += 1
    seconds = time.perf_counter() - started
    validation_loss = _mean_loss(model, validation, config.batch_size, tokenizer.pad_token_id, device)
    if config.lora_rank:
        model = model.merge_and_unload()
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    card.save(output_dir)
    tail = [loss for _, loss in curve[-10:]]
    result = EncoderResult(step, len(train), seconds, sum(tail) / len(tail), validation_loss, curve, device,
                           dict(skipped))
    (output_dir / "training.json").write_text(json.dumps({"config": asdict(config), "result": asdict(result)}))
    return result


@torch.no_grad()
def _mean_loss(model, examples: list[dict], batch_size: int, pad_id: int, device: str) -> float | None:
    if not examples:
        return None
    model.eval()
    total = 0.0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        batch = {k: v.to(device) for k, v in _collate(chunk, pad_id).items()}
        total += model(**batch).loss.item() * len(chunk)
    model.train()
    return total / len(examples)

