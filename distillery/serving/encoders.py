"""Encoder students answering: one forward pass over a batch of requests, no decoding.

``EncoderStudent.load(folder)`` reads an encoder student's folder (its weights, tokenizer and card, as
``training.encoders`` saves them) and ``answer`` returns ``Generation``s like the generative engine's, so evaluation,
the model server, the cascade and the gateway read them the same way:

- a classifier answers its most probable label; its one "token" is the label, with the label's log-probability
  under the softmax over the label set (``tasks.LABEL_PROBABILITY`` is its probability);
- a span tagger tags each word of the user's text (its first piece's tag; an inside tag that follows no span of its
  field opens one), keeps each field's most probable span, and answers the compact JSON object the generative student
  writes (``tasks.serialize_answer``), every value a run of whole words of the user's text; its "tokens" are the
  words, each with its chosen tag's log-probability, so the JSON confidence measures apply unchanged.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from distillery.errors import DistilleryError
from distillery.serving.engine import Generation
from distillery.students import (CLASSIFIER, OUTSIDE, SPAN_TAGGER, StudentCard, classifier_text, tagger_context,
                                 tagger_text)
from distillery.tasks import serialize_answer


@dataclass
class EncoderStudent:
    card: StudentCard
    model: torch.nn.Module
    tokenizer: object
    device: str

    @classmethod
    def load(cls, folder: Path, device: str | None = None) -> "EncoderStudent":
        from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

        card = StudentCard.load(Path(folder))
        if card is None or card.kind not in (CLASSIFIER, SPAN_TAGGER):
            raise DistilleryError(f"{folder} holds no encoder student (no classifier or span-tagger card)")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        head = AutoModelForSequenceClassification if card.kind == CLASSIFIER else AutoModelForTokenClassification
        model = head.from_pretrained(folder).to(device).eval()
        return cls(card, model, AutoTokenizer.from_pretrained(folder), device)

    def answer(self, conversations: list[list[dict]], batch_size: int = 64) -> list[Generation]:
        """One answer per conversation, in batches of similar length (rows sorted by length, padding kept small)."""
        classifier = self.card.kind == CLASSIFIER
        texts = [classifier_text(m) if classifier else tagger_text(m) for m in conversations]
        contexts = [None if classifier else tagger_context(m) for m in conversations]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]) + len(contexts[i] or ""))
        answers: list[Generation | None] = [None] * len(texts)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            began = time.perf_counter()
            batch = [texts[i] for i in rows]
            generations = self._classify(batch) if classifier else self._tag([contexts[i] for i in rows], batch)
            latency_ms = (time.perf_counter() - began) * 1000
            for row, generation in zip(rows, generations):
                generation.latency_ms = latency_ms
                answers[row] = generation
        return answers

    def _encode(self, *segments: list[str], **options):
        return self.tokenizer(*segments, truncation=True, max_length=self.card.max_seq_len, padding=True,
                              return_tensors="pt", **options)

    @torch.inference_mode()
    def _classify(self, texts: list[str]) -> list[Generation]:
        encoded = self._encode(texts)
        logprobs = torch.log_softmax(self.model(**{k: v.to(self.device) for k, v in encoded.items()}).logits.float(), -1)
        best, chosen = logprobs.max(-1)
        lengths = encoded["attention_mask"].sum(-1).tolist()
        return [Generation(self.card.labels[label], 1, length, "stop", 0.0, token_ids=[label], token_logprobs=[score])
                for label, score, length in zip(chosen.tolist(), best.tolist(), lengths)]

    @torch.inference_mode()
    def _tag(self, contexts: list[str], texts: list[str]) -> list[Generation]:
        encoded = self._encode(contexts, texts, return_offsets_mapping=True)
        offsets = encoded.pop("offset_mapping").tolist()
        logprobs = torch.log_softmax(self.model(**{k: v.to(self.device) for k, v in encoded.items()}).logits.float(), -1)
        tags = self.card.tags
        schema = json.loads(self.card.json_schema) if self.card.json_schema else None
        generations = []
        for row, text in enumerate(texts):
            # (first piece, start, end) per word of the user's text, the second segment (the context is not tagged)
            words = _words([word if segment == 1 else None
                            for word, segment in zip(encoded.word_ids(row), encoded.sequence_ids(row))], offsets[row])
            best, chosen = logprobs[row, [piece for piece, _, _ in words]].max(-1) if words else (torch.zeros(0),
                                                                                                  torch.zeros(0))
            scores, picks = best.tolist(), [int(tag) for tag in chosen.tolist()]
            spans: dict[str, tuple[float, int, int]] = {}  # field -> (mean log-probability, start, end): the likeliest
            current: list | None = None  # [field, log-probability sum, words, start, end]
            for (_, start, end), tag, score in zip(words, picks, scores):
                name = tags[tag]
                field = name[2:] if name != OUTSIDE else None
                if current is not None and name == f"I-{current[0]}":
                    current[1:3] = current[1] + score, current[2] + 1
                    current[4] = end
                    continue
                _close(current, spans)
                current = [field, score, 1, start, end] if field is not None else None
            _close(current, spans)
            record = _nested({field: text[start:end] for field, (_, start, end) in spans.items()})
            generations.append(Generation(serialize_answer(record, schema), len(words),
                                          int(encoded["attention_mask"][row].sum()), "stop", 0.0, token_ids=picks,
                                          token_logprobs=scores))
        return generations


def _words(word_ids: list[int | None], offsets: list[list[int]]) -> list[tuple[int, int, int]]:
    """Each word of a tokenized text: the position of its first piece, and its character span."""
    words: list[tuple[int, int, int]] = []
    for position, word in enumerate(word_ids):
        if word is None:
            continue
        start, end = offsets[position]
        if position and word_ids[position - 1] == word:
            first, first_start, _ = words[-1]
            words[-1] = (first, first_start, end)
        else:
            words.append((position, start, end))
    return words


def _close(span: list | None, spans: dict[str, tuple[float, int, int]]) -> None:
    """Keep a finished span when it is its field's first, or likelier per word than the one kept."""
    if span is None:
        return
    field, total, count, start, end = span
    if field not in spans or total / count > spans[field][0]:
        spans[field] = (total / count, start, end)


def _nested(flat: dict[str, str]) -> dict:
    """``{"slots.city": "Paris"}`` as ``{"slots": {"city": "Paris"}}`` (a tagger's fields are dotted paths)."""
    record: dict = {}
    for path, value in flat.items():
        node = record
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return record
