"""The fine-tune, out of the Dagster code-server process: a Dagster Pipes worker.

The ``lora_adapter`` asset starts it as a local subprocess or as a Kubernetes job on a GPU
node (``resources/workers.py``); the same command runs in both:

    python -m workers.train_lora

It reads its inputs from the Pipes extras (workload, the curated dataset version Dagster
recorded, training config, base model, artifact root, MLflow URIs, run tags), trains
through ``distillery.lifecycle.train_adapter``, streams
progress as Pipes log lines, and reports the materialization's metadata back. A user error
(``DistilleryError``) ends it with that message, which Dagster shows as the asset's failure.
"""

from __future__ import annotations

import torch
from dagster_pipes import PipesContext, open_dagster_pipes

from distillery.lifecycle import train_adapter
from distillery.models import resolve_base_model
from workers import mlflow_links, open_stores


def run(pipes: PipesContext) -> None:
    extras = pipes.extras
    workload = extras["workload"]
    if extras.get("torch_threads"):
        torch.set_num_threads(extras["torch_threads"])

    def progress(step: int, total: int, loss: float) -> None:
        if step == 1 or step == total or step % max(1, total // 10) == 0:
            pipes.log.info(f"training {workload}: step {step}/{total}, loss {loss:.4f}")

    artifacts, tracker = open_stores(extras)
    summary = train_adapter(
        artifacts, tracker, workload, resolve_base_model(extras["base_model"]), extras["config"],
        run_tags=extras["run_tags"], on_step=progress, log=pipes.log.info, dataset_version=extras["dataset_version"],
    )
    result = summary.result
    pipes.report_asset_materialization(metadata={
        "mlflow_run_id": summary.run_id,
        "registered_model": summary.registered_model,
        "model_version": summary.model_version,
        **mlflow_links(extras, tracker, workload, summary.run_id, summary.model_version),
        "steps": result.steps,
        "train_examples": result.train_examples,
        "train_loss_mean_last_10_steps": round(result.final_train_loss, 4),
        "validation_loss": round(result.validation_loss, 4) if result.validation_loss is not None else None,
        "train_seconds": round(result.seconds, 1),
        "tokens_per_s": round(result.tokens_per_s, 1),
        "resumed_from_step": result.resumed_from_step,
        "stopped_early": result.stopped_early,
        "device": result.device,
        "peak_gpu_memory_mb": round(result.peak_memory_mb),
        "version": summary.artifact.version,
        "path": {"raw_value": str(summary.artifact.path), "type": "path"},
    }, data_version=summary.artifact.version)


def main() -> None:
    with open_dagster_pipes() as pipes:
        run(pipes)


if __name__ == "__main__":
    main()
