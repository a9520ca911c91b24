import json
import random

import pytest
from datasets import Dataset

from distillery.errors import DistilleryError
from distillery.models import load_tokenizer, resolve_base_model
from distillery.training import TrainingConfig, train_lora
from distillery.training.trainer import IGNORE_INDEX, length_grouped_batches, render_example

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


ROWS = [{"messages": [{"role": "user", "content": f"ticket {i}"},
                      {"role": "assistant", "content": ["billing", "shipping"][i % 2]}]} for i in range(32)]


def test_answer_loss_equals_the_models_own_loss_on_the_answer_tokens(tiny_model_dir):
    """The LM head applied at answer positions only gives the same loss as the full forward pass."""
    import torch
    from transformers import AutoModelForCausalLM

    from distillery.training.trainer import answer_loss, collate

    tokenizer = load_tokenizer(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    batch = collate([render_example(tokenizer, row["messages"]) for row in ROWS[:4]], tokenizer.pad_token_id)
    with torch.no_grad():
        assert answer_loss(model, batch).item() == pytest.approx(model(**batch).loss.item(), rel=1e-4)


def test_label_vocabulary_loss_and_top_layer_lora(tiny_model_dir, tmp_path):
    config = TrainingConfig(rank=4, alpha=8, epochs=4, batch_size=8, learning_rate=1e-2, warmup_fraction=0,
                            lora_layers=1, label_vocab_loss=True, lr_schedule="linear")
    result = train_lora(Dataset.from_list(ROWS), Dataset.from_list(ROWS[:8]), tiny_model_dir, tmp_path / "adapter",
                        config, labels=["billing", "shipping"])
    assert result.final_train_loss < result.loss_curve[0][1] * 0.5
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["layers_to_transform"] == [1]  # the tiny model has 2 layers: only the top one is adapted


def test_validation_curve_and_early_stopping(tiny_model_dir, tmp_path):
    config = TrainingConfig(rank=4, alpha=8, epochs=50, batch_size=8, learning_rate=5e-2, warmup_fraction=0,
                            eval_every=2, early_stopping_patience=2, lr_schedule="constant")
    # Validation answers the opposite of training: its loss rises as training fits, so it stops early.
    flipped = [{"messages": r["messages"][:1] + [{"role": "assistant", "content": ["shipping", "billing"][i % 2]}]}
               for i, r in enumerate(ROWS[:8])]
    result = train_lora(Dataset.from_list(ROWS), Dataset.from_list(flipped), tiny_model_dir, tmp_path / "adapter",
                        config)
    assert result.stopped_early and result.steps < 200
    assert [step for step, _ in result.validation_curve] == list(range(2, result.steps + 1, 2))
    assert result.validation_loss == min(loss for _, loss in result.validation_curve)  # the best weights are kept


def test_a_bad_schedule_name_is_refused():
    with pytest.raises(DistilleryError, match="lr_schedule"):
        TrainingConfig(lr_schedule="warm")


def test_qlora_without_a_gpu_says_so(tiny_model_dir, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(DistilleryError, match="qlora needs a CUDA GPU"):
        train_lora(Dataset.from_list(ROWS), Dataset.from_list(ROWS[:4]), tiny_model_dir, tmp_path / "a",
                   TrainingConfig(qlora=True, max_steps=1))


_KILLABLE_RUN = """
import sys
from datasets import Dataset
from distillery.training import TrainingConfig, train_lora
rows = [{"messages": [{"role": "user", "content": f"ticket {i}"},
                      {"role": "assistant", "content": ["billing", "shipping"][i % 2]}]} for i in range(32)]
config = TrainingConfig(rank=4, alpha=8, max_steps=400, batch_size=8, learning_rate=1e-2, checkpoint_every=3)
train_lora(Dataset.from_list(rows), Dataset.from_list(rows[:4]), sys.argv[1], __import__("pathlib").Path(sys.argv[2]),
           config, checkpoint_dir=__import__("pathlib").Path(sys.argv[3]))
"""


def test_a_killed_training_resumes_from_its_last_checkpoint(tiny_model_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    checkpoints = tmp_path / "checkpoints"
    process = subprocess.Popen([sys.executable, "-c", _KILLABLE_RUN, str(tiny_model_dir), str(tmp_path / "first"),
                                str(checkpoints)], env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 120
    while not (checkpoints / "checkpoint.pt").exists():
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoint before the run ended"
        time.sleep(0.05)
    time.sleep(0.3)
    process.send_signal(signal.SIGKILL)  # a crash: no cleanup, no final save
    process.wait()
    assert not (tmp_path / "first" / "adapter_model.safetensors").exists()

    with pytest.raises(DistilleryError, match="written with another training config"):
        train_lora(Dataset.from_list(ROWS), Dataset.from_list(ROWS[:4]), tiny_model_dir, tmp_path / "other",
                   TrainingConfig(rank=8, max_steps=400, checkpoint_every=3), checkpoint_dir=checkpoints)

    messages = []
    config = TrainingConfig(rank=4, alpha=8, max_steps=400, batch_size=8, learning_rate=1e-2, checkpoint_every=3)
    result = train_lora(Dataset.from_list(ROWS), Dataset.from_list(ROWS[:4]), tiny_model_dir, tmp_path / "second",
                        config, checkpoint_dir=checkpoints, log=messages.append)
    assert result.resumed_from_step >= 3 and result.resumed_from_step % 3 == 0
    assert messages and messages[0].startswith(f"resuming from the checkpoint at step {result.resumed_from_step}/400")
    assert result.steps == 400 and result.loss_curve[0][0] == 1  # the curve carries the first run's steps
    assert not checkpoints.exists()  # a finished run removes its checkpoint



def test_promotion_leaves_one_champion_and_challenger_only_on_the_newest_unpromoted_version(tmp_path):
    from distillery.training import CHALLENGER, CHAMPION, Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts"))

    def trained() -> str:  # what train_adapter does: a run, a registered version, the challenger alias
        with tracker.run("triage", "run", {}) as run_id:
            version = tracker.register_adapter("triage", run_id, {})
        tracker.set_alias("triage", CHALLENGER, version)
        return version

    def aliases() -> tuple:
        return tracker.alias_version("triage", CHAMPION), tracker.alias_version("triage", CHALLENGER)

    first = trained()
    tracker.promote("triage", first)
    assert aliases() == ("1", None)
    trained()  # refused by the gate: stays challenger, the newest not yet promoted
    assert aliases() == ("1", "2")
    third = trained()
    assert aliases() == ("1", "3")
    tracker.promote("triage", third)
    assert aliases() == ("3", None)
    experiment = tracker.client.get_experiment(tracker.experiment_id("triage"))
    assert experiment.tags["mlflow.experimentKind"] == "finetuning"
