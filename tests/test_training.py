import json
import random

import pytest
from datasets import Dataset

from distillery.errors import DistilleryError
from distillery.models import resolve_base_model
from distillery.training import (IGNORE_INDEX, TrainingConfig, length_grouped_batches, load_tokenizer,
                                 render_example, train_lora)

CONVERSATION = [
    {"role": "system", "content": "Route the ticket."},
    {"role": "user", "content": "I was charged twice"},
    {"role": "assistant", "content": "billing"},
]


def test_only_the_assistant_answer_is_trained_on(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    example = render_example(tokenizer, CONVERSATION)
    prompt = tokenizer.apply_chat_template(CONVERSATION[:-1], tokenize=False, add_generation_prompt=True)
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert example.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    trained = [t for t in example.labels if t != IGNORE_INDEX]
    assert tokenizer.decode(trained).startswith("billing<|im_end|>")
    assert example.input_ids[n_prompt:] == trained


def test_an_example_must_end_with_the_answer(tiny_model_dir):
    with pytest.raises(ValueError, match="must end with an assistant message"):
        render_example(load_tokenizer(tiny_model_dir), CONVERSATION[:-1])


def test_length_grouped_batches_cover_every_example_once_with_little_padding():
    rng = random.Random(0)
    lengths = [rng.randint(5, 200) for _ in range(1000)]
    batches = length_grouped_batches(lengths, 16, random.Random(1))
    assert sorted(i for b in batches for i in b) == list(range(1000))
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    naive = sum(len(b) * max(lengths[i] for i in b) for b in (range(s, min(s + 16, 1000)) for s in range(0, 1000, 16)))
    assert padded < 0.6 * naive


def test_training_lowers_the_loss_and_saves_a_peft_adapter(tiny_model_dir, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"ticket {i}"},
                          {"role": "assistant", "content": ["billing", "shipping"][i % 2]}]} for i in range(32)]
    train = Dataset.from_list(rows)
    steps = []
    config = TrainingConfig(rank=4, alpha=8, epochs=6, batch_size=8, learning_rate=1e-2, warmup_fraction=0)
    result = train_lora(train, Dataset.from_list(rows[:8]), tiny_model_dir, tmp_path / "adapter", config,
                        on_step=lambda step, total, loss: steps.append((step, total)))
    assert result.steps == 24 and steps[-1] == (24, 24)
    first, last = result.loss_curve[0][1], result.final_train_loss
    assert last < first * 0.5
    assert result.validation_loss is not None and result.validation_loss < first
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["r"] == 4 and set(saved["target_modules"]) == set(config.target_modules)


def test_a_missing_base_model_path_says_what_to_pass(tmp_path):
    with pytest.raises(DistilleryError, match=r"base model path .*nowhere does not exist"):
        resolve_base_model(str(tmp_path / "nowhere"))
