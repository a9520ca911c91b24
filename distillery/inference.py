"""Greedy generation for chat conversations, batched, with or without a LoRA adapter."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from distillery.training import load_tokenizer


@dataclass
class Generation:
    text: str
    completion_tokens: int
    prompt_tokens: int
    finish_reason: str
    latency_ms: float  # wall time of the batch the request was in: what its caller waited


def load_model(base_model: str, adapters: dict[str, Path] | None = None):
    """The base model, wrapped in peft with every named adapter loaded when there are any."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    for i, (name, path) in enumerate((adapters or {}).items()):
        if i == 0:
            model = PeftModel.from_pretrained(model, str(path), adapter_name=name)
        else:
            model.load_adapter(str(path), adapter_name=name)
    model.eval()
    tokenizer = load_tokenizer(base_model)
    tokenizer.padding_side = "left"
    return model, tokenizer


@contextlib.contextmanager
def using_adapter(model, name: str | None) -> Iterator[None]:
    """Generate with the named adapter, or with the bare base model when ``name`` is None."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        if name is not None:
            raise ValueError(f"no adapter {name!r}: the model was loaded without adapters")
        yield
    elif name is None:
        with model.disable_adapter():
            yield
    else:
        model.set_adapter(name)
        yield


class AnswerTrie:
    """The token sequences of a closed answer set (classification labels), for constrained decoding.

    At each step only tokens that continue some answer are allowed; a completed answer allows
    only end-of-turn. The model then always produces one of the answers, exactly spelled.
    """

    def __init__(self, tokenizer, answers: list[str]):
        from distillery.training import answer_token_ids

        self._children: dict[tuple[int, ...], set[int]] = {}
        for answer in answers:
            ids = answer_token_ids(tokenizer, answer)
            for i in range(len(ids)):
                self._children.setdefault(tuple(ids[:i]), set()).add(ids[i])
        self._end = [tokenizer.eos_token_id]

    def allowed(self, generated: list[int]) -> list[int]:
        return sorted(self._children.get(tuple(generated), ())) or self._end


@torch.no_grad()
def generate(model, tokenizer, conversations: list[list[dict]], *, max_new_tokens: int = 32,
             batch_size: int = 16, answers: list[str] | None = None) -> list[Generation]:
    """Greedy answers, in the order of ``conversations``.

    Batches are formed from prompts of similar length (sorted, then restored), so little compute
    goes into padding. With ``answers`` (a label set) decoding is constrained to exactly those strings.
    """
    stop_ids = [tokenizer.eos_token_id]
    trie = AnswerTrie(tokenizer, answers) if answers else None
    prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    results: list[Generation | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        encoded = tokenizer([prompts[i] for i in rows], return_tensors="pt", padding=True, add_special_tokens=False)
        encoded = {k: v.to(model.device) for k, v in encoded.items()}
        width = encoded["input_ids"].shape[1]
        constrain = (lambda _row, ids: trie.allowed(ids[width:].tolist())) if trie else None
        began = time.perf_counter()
        output = model.generate(
            **encoded, max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=stop_ids, prefix_allowed_tokens_fn=constrain,
        )
        latency_ms = (time.perf_counter() - began) * 1000
        for i, row in zip(rows, output):
            new = row[width:].tolist()
            stopped = any(t in stop_ids for t in new)
            if stopped:
                new = new[: next(k for k, t in enumerate(new) if t in stop_ids)]
            results[i] = Generation(
                text=tokenizer.decode(new, skip_special_tokens=True).strip(),
                completion_tokens=len(new),
                prompt_tokens=lengths[i],
                finish_reason="stop" if stopped else "length",
                latency_ms=latency_ms,
            )
    return results
