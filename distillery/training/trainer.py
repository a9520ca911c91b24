"""LoRA fine-tuning of a causal LM on chat-format examples, loss on assistant tokens only.

Examples are rendered with the base model's chat template; every token of the prompt
(system and user turns, and the assistant header) is masked out of the loss, so the model
learns to produce the answer, not to reproduce the prompt. Batches group examples of
similar length so that little compute goes into padding.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from distillery.errors import DistilleryError
from distillery.models import answer_token_ids, load_tokenizer
from distillery.settings import setting

if TYPE_CHECKING:
    from datasets import Dataset

IGNORE_INDEX = -100
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class TrainingConfig:
    """A fine-tune's settings; a setting a run leaves out comes from the task's recipe (``training.recipes``)."""

    base_model_revision: str | None = setting(None, "A Hub branch, tag or commit of the base model; ignored for "
                                              "local folders.")
    rank: int = setting(16, "LoRA rank.")
    alpha: int = setting(32, "LoRA alpha (the update is scaled by alpha / rank).")
    dropout: float = setting(0.05, "LoRA dropout.")
    target_modules: list[str] = setting(ALL_LINEAR, "The linear layers LoRA adapts (default: all of them).")
    lora_layers: int = setting(0, "LoRA on the top N decoder layers only (backward stops there); 0: all layers.")
    learning_rate: float = setting(1e-3, "Peak learning rate.")
    lr_schedule: str = setting("cosine", "cosine, linear or constant, after the warmup.")
    warmup_fraction: float = setting(0.1, "The share of the schedule spent warming up.")
    epochs: float = setting(2.0, "Passes over the training split.")
    max_steps: int = setting(0, "Optimizer steps at most; 0: the full number of epochs.")
    max_seconds: float = setting(0, "A time budget in seconds; the schedule decays over whichever of steps or time "
                                 "ends first; 0: none.")
    batch_size: int = setting(16, "Examples per micro-batch.")
    grad_accum: int = setting(1, "Micro-batches per optimizer step.")
    max_seq_len: int = setting(512, "Longer examples are skipped (and counted).")
    seed: int = setting(0, "Seed of the batch order and the adapter's initialization.")
    precision: str = setting("auto", "auto (bf16 on GPU, fp32 on CPU), fp32 or bf16.")
    gradient_checkpointing: bool = setting(False, "Recompute activations in the backward pass: less memory, slower.")
    qlora: bool = setting(False, "4-bit base weights through bitsandbytes; GPU only.")
    eval_every: int = setting(0, "Validation loss every N optimizer steps; 0: at the end only.")
    early_stopping_patience: int = setting(0, "Stop after N validations without improvement; 0: never.")
    checkpoint_every: int = setting(25, "Optimizer steps between resumable checkpoints; 0: none.")
    # Faster and sharper, but the model is then only trained to rank labels, so it must be served with decoding
    # constrained to the label set (eval_report does).
    label_vocab_loss: bool = setting(False, "Classification: the softmax over the label set's tokens only.")

    def __post_init__(self) -> None:
        if self.lr_schedule not in SCHEDULES:
            raise DistilleryError(f"lr_schedule must be one of {sorted(SCHEDULES)}, not {self.lr_schedule!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise DistilleryError(f"precision must be auto, fp32 or bf16, not {self.precision!r}")


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
    validation_curve: list[tuple[int, float]] = field(default_factory=list)
    resumed_from_step: int = 0
    stopped_early: bool = False
    device: str = "cpu"
    peak_memory_mb: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.train_tokens / self.seconds if self.seconds else 0.0


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]


StepCallback = Callable[[int, int, float], None]
SCHEDULES = {
    "cosine": lambda progress: 0.5 * (1 + math.cos(math.pi * progress)),
    "linear": lambda progress: 1 - progress,
    "constant": lambda progress: 1.0,
}


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


def train_lora(
    dataset_train: Dataset,
    dataset_validation: Dataset,
    base_model: str,
    output_dir: Path,
    config: TrainingConfig,
    on_step: StepCallback | None = None,
    *,
    checkpoint_dir: Path | None = None,
    labels: list[str] | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> TrainingResult:
    """Train a LoRA adapter and save it (peft format) into ``output_dir``.

    With ``checkpoint_dir``, the run saves its state there every ``checkpoint_every`` steps and
    a rerun after a crash continues from the last one (and says so through ``log``); a
    finished run removes it. ``labels`` (classification) enables ``label_vocab_loss``.
    """
    torch.manual_seed(config.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_tokenizer(base_model, config.base_model_revision)
    train, skipped = _tokenize(tokenizer, dataset_train, config.max_seq_len)
    validation, _ = _tokenize(tokenizer, dataset_validation, config.max_seq_len)
    if not train:
        raise DistilleryError(f"no training example fits in max_seq_len={config.max_seq_len} tokens")
    model = build_lora_model(base_model, config, device)
    vocabulary = _answer_vocabulary(tokenizer, labels).to(device) if config.label_vocab_loss and labels else None
    use_bf16 = config.precision == "bf16" or (config.precision == "auto" and device == "cuda")

    steps_per_epoch = math.ceil(len(train) / (config.batch_size * config.grad_accum))
    total_steps = config.max_steps or max(1, math.ceil(steps_per_epoch * config.epochs))
    warmup_steps = int(total_steps * config.warmup_fraction)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    state = _TrainState()
    if checkpoint_dir and (checkpoint_dir / _CHECKPOINT).exists():
        state = _load_checkpoint(checkpoint_dir, model, optimizer, config)
        log(f"resuming from the checkpoint at step {state.step}/{total_steps} in {checkpoint_dir}")
    resumed_from = state.step

    def learning_rate_now() -> float:
        if state.step < warmup_steps:
            return config.learning_rate * (state.step + 1) / (warmup_steps + 1)
        progress = (state.step - warmup_steps) / max(1, total_steps - warmup_steps)
        if config.max_seconds:
            progress = max(progress, state.seconds / config.max_seconds)
        return config.learning_rate * SCHEDULES[config.lr_schedule](min(1.0, progress))

    lengths = [len(e.input_ids) for e in train]
    model.train()
    started = time.perf_counter() - state.seconds
    stop = False
    while not stop:
        batches = length_grouped_batches(lengths, config.batch_size, random.Random(config.seed + state.epoch))
        groups = [batches[i : i + config.grad_accum] for i in range(0, len(batches), config.grad_accum)]
        for group in groups[state.batch_in_epoch:]:
            for group_param in optimizer.param_groups:
                group_param["lr"] = learning_rate_now()
            loss_sum = 0.0
            for batch_ids in group:
                batch = {k: v.to(device) for k, v in collate([train[i] for i in batch_ids],
                                                             tokenizer.pad_token_id).items()}
                with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=use_bf16):
                    loss = answer_loss(model, batch, vocabulary) / len(group)
                loss.backward()
                loss_sum += loss.item()
                state.tokens += int(batch["attention_mask"].sum())
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.batch_in_epoch += 1
            state.seconds = time.perf_counter() - started
            state.curve.append((state.step, loss_sum))
            if on_step:
                on_step(state.step, total_steps, loss_sum)
            if validation and config.eval_every and state.step % config.eval_every == 0:
                stop = _validate(model, validation, config, tokenizer, device, vocabulary, state, output_dir)
            if config.checkpoint_every and checkpoint_dir and state.step % config.checkpoint_every == 0:
                _save_checkpoint(checkpoint_dir, model, optimizer, config, state)
            if stop or state.step >= total_steps or (config.max_seconds and state.seconds >= config.max_seconds):
                stop = True
                break
        else:
            state.epoch += 1
            state.batch_in_epoch = 0

    output_dir.mkdir(parents=True, exist_ok=True)
    best = output_dir / _BEST
    validation_loss = None
    if validation:
        if state.best_step is not None and best.exists():  # early stopping kept the best weights
            _restore_adapter(model, best)
            validation_loss = state.best_loss
        else:
            validation_loss = mean_answer_loss(model, validation, config.batch_size, tokenizer.pad_token_id, device,
                                               vocabulary)
            state.validation_curve.append((state.step, validation_loss))
    if best.exists():
        best.unlink()
    model.save_pretrained(output_dir)
    tail = [loss for _, loss in state.curve[-10:]] or [float("nan")]
    result = TrainingResult(
        steps=state.step,
        train_examples=len(train),
        skipped_too_long=skipped,
        train_tokens=state.tokens,
        seconds=state.seconds,
        final_train_loss=sum(tail) / len(tail),
        validation_loss=validation_loss,
        loss_curve=state.curve,
        validation_curve=state.validation_curve,
        resumed_from_step=resumed_from,
        stopped_early=state.stopped_early,
        device=device,
        peak_memory_mb=torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else 0.0,
    )
    (output_dir / "training.json").write_text(json.dumps({"config": asdict(config), "result": asdict(result)}, indent=2))
    if checkpoint_dir and checkpoint_dir.exists():
        shutil.rmtree(checkpoint_dir)
    return result


def answer_loss(model, batch: dict[str, torch.Tensor], vocabulary: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy on the answer tokens, with the LM head applied at those positions only.

    The head is 49k x 576 on SmolLM2: on every position it costs a fifth of the forward pass,
    yet only the answer positions (a few of ~40) carry loss. ``vocabulary`` further restricts
    the softmax to the label set's tokens, the distribution constrained decoding samples from.
    """
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = causal_lm.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["labels"][:, 1:]
    selected = targets != IGNORE_INDEX
    states = hidden[:, :-1][selected]
    targets = targets[selected]
    weight = causal_lm.get_output_embeddings().weight
    if vocabulary is None:
        logits = states @ weight.T
    else:
        logits = states @ weight[vocabulary].T
        targets = torch.searchsorted(vocabulary, targets)
    return torch.nn.functional.cross_entropy(logits.float(), targets)


@torch.no_grad()
def mean_answer_loss(model, examples: list[TokenizedExample], batch_size: int, pad_id: int, device: str = "cpu",
                     vocabulary: torch.Tensor | None = None) -> float:
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[start : start + batch_size], pad_id).items()}
        n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        total += answer_loss(model, batch, vocabulary).item() * n
        count += n
    model.train(was_training)
    return total / max(count, 1)


def build_lora_model(base_model: str, config: TrainingConfig, device: str):
    """The base model with fresh LoRA layers as ``config`` says (layers, modules, qlora, checkpointing)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    options: dict = {"dtype": torch.float32}
    if config.qlora:
        if device != "cuda":
            raise DistilleryError("qlora needs a CUDA GPU (bitsandbytes 4-bit); train in fp32 on CPU instead")
        from transformers import BitsAndBytesConfig

        options = {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                             bnb_4bit_compute_dtype=torch.bfloat16),
                   "device_map": {"": 0}}
    model = AutoModelForCausalLM.from_pretrained(base_model, revision=config.base_model_revision, **options)
    if config.qlora:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    elif config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    layers = model.config.num_hidden_layers
    top = range(layers - config.lora_layers, layers) if 0 < config.lora_layers < layers else None
    model = get_peft_model(model, LoraConfig(
        r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout, target_modules=config.target_modules,
        layers_to_transform=list(top) if top else None, task_type="CAUSAL_LM",
    ))
    return model if config.qlora else model.to(device)


def _answer_vocabulary(tokenizer, labels: list[str]) -> torch.Tensor:
    ids = {tokenizer.eos_token_id}
    for label in labels:
        ids.update(answer_token_ids(tokenizer, label))
    return torch.tensor(sorted(ids))


@dataclass
class _TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # optimizer steps already taken in this epoch
    tokens: int = 0
    seconds: float = 0.0
    curve: list[tuple[int, float]] = field(default_factory=list)
    validation_curve: list[tuple[int, float]] = field(default_factory=list)
    best_loss: float = math.inf
    best_step: int | None = None
    bad_validations: int = 0
    stopped_early: bool = False


_CHECKPOINT = "checkpoint.pt"
_BEST = "best-adapter.pt"


def _validate(model, validation, config: TrainingConfig, tokenizer, device, vocabulary, state: _TrainState,
              output_dir: Path) -> bool:
    """Record a validation loss, keep the best adapter weights; True when early stopping says stop."""
    loss = mean_answer_loss(model, validation, config.batch_size, tokenizer.pad_token_id, device, vocabulary)
    state.validation_curve.append((state.step, loss))
    if loss < state.best_loss:
        state.best_loss, state.best_step, state.bad_validations = loss, state.step, 0
        output_dir.mkdir(parents=True, exist_ok=True)
        _atomic_save(_adapter_state(model), output_dir / _BEST)
        return False
    state.bad_validations += 1
    state.stopped_early = bool(config.early_stopping_patience) and state.bad_validations >= config.early_stopping_patience
    return state.stopped_early


def _adapter_state(model) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model).items()}


def _restore_adapter(model, path: Path) -> None:
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, torch.load(path, weights_only=True))


def _atomic_save(payload, path: Path) -> None:
    temporary = path.with_suffix(".tmp")
    torch.save(payload, temporary)
    os.replace(temporary, path)


def _save_checkpoint(folder: Path, model, optimizer, config: TrainingConfig, state: _TrainState) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_save({"config": asdict(config), "state": asdict(state), "adapter": _adapter_state(model),
                  "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()}, folder / _CHECKPOINT)


def _load_checkpoint(folder: Path, model, optimizer, config: TrainingConfig) -> _TrainState:
    from peft import set_peft_model_state_dict

    saved = torch.load(folder / _CHECKPOINT, weights_only=False)
    if saved["config"] != asdict(config):
        raise DistilleryError(f"the checkpoint in {folder} was written with another training config; "
                              "delete it to start over, or rerun with the same config to resume")
    set_peft_model_state_dict(model, saved["adapter"])
    optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["torch_rng"])
    state = _TrainState(**saved["state"])
    state.curve = [tuple(point) for point in state.curve]
    state.validation_curve = [tuple(point) for point in state.validation_curve]
    return state


def _tokenize(tokenizer, dataset: Dataset, max_len: int) -> tuple[list[TokenizedExample], int]:
    examples = [render_example(tokenizer, row["messages"]) for row in dataset]
    kept = [e for e in examples if len(e.input_ids) <= max_len]
    return kept, len(examples) - len(kept)
