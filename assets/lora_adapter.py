import dagster as dg

from assets.curated_dataset import curated_dataset
from assets.errors import user_errors_as_failures
from assets.partitions import workload_partitions
from distillery.lifecycle import train_adapter
from distillery.training import TrainingConfig
from resources import ArtifactsResource, MlflowResource, TrainerResource

_DEFAULTS = TrainingConfig()


class LoraConfig(dg.Config):
    """LoRA hyperparameters; every field is logged as an MLflow param."""

    rank: int = _DEFAULTS.rank
    alpha: int = _DEFAULTS.alpha
    dropout: float = _DEFAULTS.dropout
    target_modules: list[str] = _DEFAULTS.target_modules
    learning_rate: float = _DEFAULTS.learning_rate
    epochs: float = _DEFAULTS.epochs
    max_steps: int = _DEFAULTS.max_steps
    batch_size: int = _DEFAULTS.batch_size
    warmup_fraction: float = _DEFAULTS.warmup_fraction
    max_seq_len: int = _DEFAULTS.max_seq_len
    seed: int = _DEFAULTS.seed


@dg.asset(partitions_def=workload_partitions, deps=[curated_dataset], kinds={"pytorch", "mlflow"},
          group_name="lifecycle")
def lora_adapter(
    context: dg.AssetExecutionContext, config: LoraConfig, artifacts: ArtifactsResource,
    mlflow: MlflowResource, trainer: TrainerResource,
) -> dg.MaterializeResult:
    """A peft LoRA adapter on the base model, loss on assistant tokens only; an MLflow run and model version."""
    workload = context.partition_key

    def log_progress(step: int, total: int, loss: float) -> None:
        if step == 1 or step == total or step % max(1, total // 10) == 0:
            context.log.info(f"training {workload}: step {step}/{total}, loss {loss:.4f}")

    with user_errors_as_failures():
        summary = train_adapter(
            artifacts.open(), mlflow.open(), workload, trainer.prepare(), TrainingConfig(**config.model_dump()),
            run_tags={"dagster.run_id": context.run.run_id, "dagster.partition": workload},
            on_step=log_progress,
        )
    result = summary.result
    return dg.MaterializeResult(
        metadata={
            "mlflow_run_id": summary.run_id,
            "registered_model": summary.registered_model,
            "model_version": summary.model_version,
            "steps": result.steps,
            "train_examples": result.train_examples,
            "final_train_loss": result.final_train_loss,
            "validation_loss": result.validation_loss,
            "train_seconds": round(result.seconds, 1),
            "tokens_per_s": round(result.tokens_per_s, 1),
            "version": summary.artifact.version,
            "path": dg.MetadataValue.path(str(summary.artifact.path)),
        }
    )
