from typing import Any

import dagster as dg
from pydantic import Field

from assets.conditions import follow_checked_upstream
from assets.configs import config_from
from assets.curated_dataset import curated_dataset
from assets.errors import user_errors_as_failures
from assets.partitions import workload_partitions
from assets.upstream import recorded_version
from distillery.training import TrainingConfig
from resources import ArtifactsResource, MlflowResource, TrainerResource, WorkerLauncherResource
from resources.workers import TRAIN_LORA

class CandidateConfig(dg.Config):
    """One candidate student (distillery.training.students)."""

    kind: str = Field(description="generative (a LoRA adapter that decodes), classifier (an encoder with a "
                      "classification head) or span_tagger (an encoder tagging the user's words).")
    base_model: str | None = Field(default=None, description="Its base: a transformers id or path; empty: the "
                                   "generative base (TrainerResource.base_model) or the bundled all-minilm-l6-v2.")
    name: str | None = Field(default=None, description="Its name in the comparison; empty: the kind.")
    settings: dict[str, Any] = Field(default_factory=dict, description="Its kind's settings: TrainingConfig's "
                                     "fields (generative) or EncoderConfig's (classifier, span tagger).")


LoraConfig = config_from(
    TrainingConfig, "LoraConfig", "The generative student's settings, all logged to MLflow, and the candidate "
    "students trained beside it. A setting the run leaves out comes from the task's recipe "
    "(distillery.training.recipes: extraction has its own), else the default shown; max_seconds is the budget of "
    "every candidate together.",
    base_model=(str | None, Field(default=None, description="Overrides TrainerResource.base_model (id or path).")),
    candidates=(list[CandidateConfig] | None, Field(default=None, description="The candidate students, trained side "
                "by side; evaluation keeps the cheapest that would pass. Empty: the task's default (classification: "
                "generative and classifier; extraction: generative and span_tagger; else generative).")))


@dg.asset(partitions_def=workload_partitions, deps=[curated_dataset], kinds={"pytorch", "mlflow"},
          group_name="lifecycle", automation_condition=follow_checked_upstream, pool="gpu")
def lora_adapter(
    context: dg.AssetExecutionContext, config: LoraConfig, artifacts: ArtifactsResource,
    mlflow: MlflowResource, trainer: TrainerResource, workers: WorkerLauncherResource,
) -> dg.MaterializeResult:
    """The workload's candidate students trained side by side (a peft LoRA adapter on the generative base, loss on
    answer tokens only; a classifier or span tagger on an encoder), each its own MLflow run under one for the
    dataset version; eval_report chooses among them on the validation split.

    Trains out of process (workers/train_lora.py through Dagster Pipes): locally or on a GPU node. The worker
    resolves the base models itself, where it runs.
    """
    from distillery.training.students import parse_candidates

    # Only what the run sets: the task's recipe (distillery.training.recipes) fills the rest, where it trains.
    training = config.to_core(only_set=True)
    candidates = [candidate.model_dump() for candidate in config.candidates] if config.candidates else None
    with user_errors_as_failures():
        TrainingConfig(**training)  # refuse a bad config here, before a worker starts
        if candidates:
            parse_candidates(candidates)
    return workers.launch(context, TRAIN_LORA, extras={
        "workload": context.partition_key,
        "dataset_version": recorded_version(context, curated_dataset),
        "config": training,
        "candidates": candidates,
        "base_model": config.base_model or trainer.base_model,
        "torch_threads": trainer.torch_threads,
        **artifacts.worker_extras(),
        **mlflow.worker_extras(),
        "run_tags": mlflow.dagster_run_tags(context),
    })
