"""A trained student as an MLflow model, so the registry's versions load with MLflow's own loader:

    model = mlflow.pyfunc.load_model("models:/distillery-support-triage@champion")
    model.predict([[{"role": "user", "content": "I was charged twice"}]])   # -> ["billing"]

A pyfunc that loads the student as the model server does and answers as it does: a generative student's base model
and adapter in the serving engine, decoding under the policy saved beside the adapter; an encoder student (a
classifier or a span tagger, its whole model under ``artifacts/``) in one forward pass. The base model is
recorded by name (a hub id, a path, or empty for the bundled one) and resolved where the model loads;
loading needs Distillery installed (``distillery.models`` and the engine). MLflow's transformers flavour
was not used: it saves the base model's weights with every version and knows nothing of the decoding
policy, so its answers would not be the served ones.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import mlflow.pyfunc
from mlflow.models import ModelSignature
from mlflow.types import ParamSchema, ParamSpec

ADAPTER = "adapter"


class AdapterModel(mlflow.pyfunc.PythonModel):
    """``predict`` takes conversations (lists of role/content messages), a DataFrame with a ``messages`` column,
    or plain strings (each one user message); it returns one answer per input. ``params={"max_tokens": N}``."""

    def load_context(self, context) -> None:
        from distillery.models import resolve_base_model
        from distillery.serving.students import load_students
        from distillery.tasks import DecodingPolicy

        adapter = Path(context.artifacts[ADAPTER])
        self.policy = DecodingPolicy.load(adapter) or DecodingPolicy()
        base = resolve_base_model(context.model_config["base_model"])
        self.student = load_students({ADAPTER: (adapter, base)})[ADAPTER]

    def predict(self, context, model_input, params=None) -> list[str]:
        if hasattr(model_input, "columns"):
            model_input = list(model_input["messages"])
        conversations = [[{"role": "user", "content": item}] if isinstance(item, str) else list(item)
                         for item in model_input]
        answers = self.student.answer(conversations, policy=self.policy, batch_size=16,
                                      max_new_tokens=int((params or {}).get("max_tokens", 32)))
        return [answer.text for answer in answers]


def save_adapter_model(adapter: Path, base_model: str, path: Path) -> Path:
    """Write the MLflow model (MLmodel, the pickled ``AdapterModel``, the adapter under ``artifacts/``) to ``path``."""
    import peft
    import torch
    import transformers

    # MLflow keeps an artifact under its folder's own name: copied as `adapter`, every version's files lie at
    # model/artifacts/adapter whatever the student was called (Tracker.download_adapter reads them there).
    staging = Path(tempfile.mkdtemp(prefix="mlflow-student-")) / ADAPTER
    try:
        shutil.copytree(adapter, staging)
        # Listed, not inferred: inferring runs the model in a subprocess to see what it imports.
        mlflow.pyfunc.save_model(
            str(path), python_model=AdapterModel(), artifacts={ADAPTER: str(staging)},
            model_config={"base_model": base_model},
            # Only the parameters: inputs are conversations of any length, which MLflow's column schemas cannot say.
            signature=ModelSignature(inputs=None, params=ParamSchema([ParamSpec("max_tokens", "long", 32)])),
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}",
                              f"peft=={peft.__version__}", "distillery"])
    finally:
        shutil.rmtree(staging.parent, ignore_errors=True)
    return path
