"""LoRA fine-tuning of a causal LM on chat-format examples, loss on assistant tokens only.

Examples are rendered with the base model's chat template; every token of the prompt
(system and user turns, and the assistant header) is masked out of the loss, so the model
learns to produce the answer, not to reproduce the prompt. Batches group examples of
similar length so that little compute goes into padding.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from datasets import Dataset

from distillery.errors import DistilleryError

IGNORE_INDEX = -100
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class TrainingConfig:
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(ALL_LINEAR))
    learning_rate: float = 1e-3
    epochs: float = 2.0
    max_steps: int = 0  # 0: run the full number of epochs
    batch_size: int = 16
    warmup_fraction: float = 0.1
    max_seq_len: int = 512
    seed: int = 0


@dataclass
class TrainingResult:
    steps: int
    train_examples: int
    skipped_too_long: int
    train_tokens: int
    seconds: float
    final_train_loss: float
    validation_loss: float | None
    loss_curve: list[tuple[int, float]]

    @property
    def tokens_per_s(self) -> float:
        return self.train_tokens / self.seconds if self.seconds else 0.0


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]


StepCallback = Callable[[int, int, float], None]


def render_example(tokenizer, messages: list[dict]) -> TokenizedExample:
    """Token ids of the whole conversation and labels that keep only the final assistant turn."""
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("a training example must end with an assistant message")
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise DistilleryError("the chat template does not render the prompt as a prefix of the conversation")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    return TokenizedExample(prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids)


def length_grouped_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar-length examples: sort within mega-batches of 50 batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = batch_size * 50
    batches = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(examples: list[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def load_tokenizer(base_model: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def train_lora(
    dataset_train: Dataset,
    dataset_validation: Dataset,
    base_model: str,
    output_dir: Path,
    config: TrainingConfig,
    on_step: StepCallback | None = None,
) -> TrainingResult:
    """Train a LoRA adapter and save it (peft format) into ``output_dir``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, get_cosine_schedule_with_warmup

    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    tokenizer = load_tokenizer(base_model)
    train, skipped = _tokenize(tokenizer, dataset_train, config.max_seq_len)
    validation, _ = _tokenize(tokenizer, dataset_validation, config.max_seq_len)
    if not train:
        raise DistilleryError(f"no training example fits in max_seq_len={config.max_seq_len} tokens")

    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(
        r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
        target_modules=config.target_modules, task_type="CAUSAL_LM",
    ))
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total_steps = config.max_steps or max(1, math.ceil(steps_per_epoch * config.epochs))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    schedule = get_cosine_schedule_with_warmup(optimizer, int(total_steps * config.warmup_fraction), total_steps)

    lengths = [len(e.input_ids) for e in train]
    curve: list[tuple[int, float]] = []
    tokens = 0
    step = 0
    started = time.perf_counter()
    model.train()
    while step < total_steps:
        for batch_ids in length_grouped_batches(lengths, config.batch_size, rng):
            batch = collate([train[i] for i in batch_ids], tokenizer.pad_token_id)
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens += int(batch["attention_mask"].sum())
            curve.append((step, loss.item()))
            if on_step:
                on_step(step, total_steps, curve[-1][1])
            if step >= total_steps:
                break
    seconds = time.perf_counter() - started

    validation_loss = _mean_loss(model, validation, config.batch_size, tokenizer.pad_token_id) if validation else None
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tail = [loss for _, loss in curve[-10:]]
    result = TrainingResult(
        steps=step,
        train_examples=len(train),
        skipped_too_long=skipped,
        train_tokens=tokens,
        seconds=seconds,
        final_train_loss=sum(tail) / len(tail),
        validation_loss=validation_loss,
        loss_curve=curve,
    )
    (output_dir / "training.json").write_text(json.dumps({"config": asdict(config), "result": asdict(result)}, indent=2))
    return result


def _tokenize(tokenizer, dataset: Dataset, max_len: int) -> tuple[list[TokenizedExample], int]:
    examples = [render_example(tokenizer, row["messages"]) for row in dataset]
    kept = [e for e in examples if len(e.input_ids) <= max_len]
    return kept, len(examples) - len(kept)


@torch.no_grad()
def _mean_loss(model, examples: list[TokenizedExample], batch_size: int, pad_id: int) -> float:
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size], pad_id)
        n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        total += model(**batch).loss.item() * n
        count += n
    model.train()
    return total / max(count, 1)
