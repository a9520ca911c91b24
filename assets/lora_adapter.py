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

LoraConfig = config_from(
    TrainingConfig, "LoraConfig", "The fine-tune's settings, all logged to MLflow. A setting the run leaves out comes "
    "from the task's recipe (distillery.training.recipes: extraction has its own), else the default shown.",
    base_model=(str | None, Field(default=None, description="Overrides TrainerResource.base_model (id or path).")))


@dg.asset(partitions_def=workload_partitions, deps=[curated_dataset], kinds={"pytorch", "mlflow"},
          group_name="lifecycle", automation_condition=follow_checked_upstream, pool="gpu")
def lora_adapter(
    context: dg.AssetExecutionContext, config: LoraConfig, artifacts: ArtifactsResource,
    mlflow: MlflowResource, trainer: TrainerResource, workers: WorkerLauncherResource,
) -> dg.MaterializeResult:
    """A peft LoRA adapter on the base model, loss on assistant tokens only; an MLflow run and model version.

    Trains out of process (workers/train_lora.py through Dagster Pipes): locally or on a GPU node. The worker
    resolves the base model itself, where it runs.
    """
    # Only what the run sets: the task's recipe (distillery.training.recipes) fills the rest, where it trains.
    training = config.to_core(only_set=True)
    with user_errors_as_failures():
        TrainingConfig(**training)  # refuse a bad config here, before a worker starts
    return workers.launch(context, TRAIN_LORA, extras={
        "workload": context.partition_key,
        "dataset_version": recorded_version(context, curated_dataset),
        "config": training,
        "base_model": config.base_model or trainer.base_model,
        "torch_threads": trainer.torch_threads,
        **artifacts.worker_extras(),
        **mlflow.worker_extras(),
        "run_tags": mlflow.dagster_run_tags(context),
    })
