"""Every kind of student behind one face for evaluation: answer rows in batches, and serve them to concurrent callers
as the model server does (``BatchingEngine``), each answer a ``Generation`` with its tokens' log-probabilities.

``load_students`` loads what a comparison needs at once: the generative students of one base model share its weights
(each a LoRA adapter on the one model, the base itself answering as ``base``), every encoder student is its own model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distillery.serving.encoders import EncoderStudent
from distillery.serving.engine import (BatchingEngine, Generation, LoadResult, generate, load_model, serve_under_load,
                                       using_adapter)
from distillery.students import GENERATIVE, kind_of
from distillery.tasks import DecodingPolicy


@dataclass
class GenerativeStudent:
    """A LoRA adapter on a loaded causal LM (``adapter`` None: the base model itself)."""

    model: object
    tokenizer: object
    adapter: str | None
    kind: str = GENERATIVE

    def answer(self, conversations: list[list[dict]], *, policy: DecodingPolicy, max_new_tokens: int,
               batch_size: int) -> list[Generation]:
        with using_adapter(self.model, self.adapter):
            return generate(self.model, self.tokenizer, conversations, max_new_tokens=max_new_tokens, policy=policy,
                            batch_size=batch_size)

    def serve(self, conversations: list[list[dict]], *, concurrency: int, policy: DecodingPolicy, max_new_tokens: int,
              batch_size: int) -> LoadResult:
        engine = BatchingEngine(self.model, self.tokenizer, max_batch=batch_size)
        try:
            return serve_under_load(engine, conversations, concurrency=concurrency, adapter=self.adapter,
                                    policy=policy, max_new_tokens=max_new_tokens)
        finally:
            engine.close()


@dataclass
class EncoderAnswerer:
    """An encoder student (``serving.encoders``) with the face of the others: it needs no policy or token limit."""

    student: EncoderStudent

    @property
    def kind(self) -> str:
        return self.student.card.kind

    @property
    def tokenizer(self):
        return self.student.tokenizer

    def answer(self, conversations: list[list[dict]], *, batch_size: int, **_) -> list[Generation]:
        return self.student.answer(conversations, batch_size=batch_size)

    def serve(self, conversations: list[list[dict]], *, concurrency: int, batch_size: int, **_) -> LoadResult:
        engine = BatchingEngine(None, None, max_batch=batch_size,
                                answer_batch=lambda _name, rows, _policies, _tokens: self.student.answer(rows, len(rows)))
        try:
            return serve_under_load(engine, conversations, concurrency=concurrency, adapter=None)
        finally:
            engine.close()


Student = GenerativeStudent | EncoderAnswerer


def load_students(folders: dict[str, tuple[Path, str]], base: str | None = None) -> dict[str, Student]:
    """Each named student folder with its base model (``{name: (folder, base_model)}``), loaded for answering; with
    ``base`` (a name), the generative students' base model too, answering under that name."""
    students: dict[str, Student] = {}
    generative = {name: (Path(folder), model) for name, (folder, model) in folders.items()
                  if kind_of(Path(folder)) == GENERATIVE}
    for model_name in dict.fromkeys(model for _, model in generative.values()):
        adapters = {name: folder for name, (folder, model) in generative.items() if model == model_name}
        model, tokenizer = load_model(model_name, adapters)
        students.update({name: GenerativeStudent(model, tokenizer, name) for name in adapters})
        if base is not None and base not in students:
            students[base] = GenerativeStudent(model, tokenizer, None)
    for name, (folder, _) in folders.items():
        if name not in students:
            students[name] = EncoderAnswerer(EncoderStudent.load(Path(folder)))
    return {name: students[name] for name in [*folders, *([base] if base in students else [])]}
