"""The fine-tune, out of the Dagster code-server process: a Dagster Pipes worker.

The ``lora_adapter`` asset starts it as a local subprocess or as a Kubernetes job on a GPU
node (``resources/workers.py``); the same command runs in both:

    python -m workers.train_lora

It reads its inputs from the Pipes extras (workload, the curated dataset version Dagster
recorded, training config, the candidate students, base model, artifact root, MLflow URIs, run tags), trains the
candidates side by side through ``distillery.lifecycle.train_adapter``, streams progress as Pipes log lines, and
reports the materialization's metadata back (the candidates' table, the parent MLflow run). A user error
(``DistilleryError``) ends it with that message, which Dagster shows as the asset's failure.
"""

from __future__ import annotations

import torch
from dagster_pipes import PipesContext, open_dagster_pipes

from distillery.lifecycle import train_adapter
from distillery.models import resolve_base_model
from workers import open_stores


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
        candidates=extras.get("candidates"),
    )
    ui = extras["mlflow_ui_url"]
    experiment = tracker.client.get_run(summary.run_id).info.experiment_id
    lines = ["| student | kind | base | status | steps | train s | validation loss |", "|---|---|---|---|---:|---:|---:|"]
    lines += [f"| {c['name']} | {c['kind']} | {c['base_model']} | {c['status'][:80]} | {c.get('steps', '-')} | "
              f"{c.get('train_seconds', '-')} | {c.get('validation_loss', '-')} |" for c in summary.candidates]
    trained = [c for c in summary.candidates if c["status"] == "trained"]
    pipes.report_asset_materialization(metadata={
        "mlflow_run_id": summary.run_id,
        "mlflow_run": {"raw_value": f"{ui}/#/experiments/{experiment}/runs/{summary.run_id}", "type": "url"},
        "candidates": {"raw_value": "\n".join(lines), "type": "md"},
        "student_kinds": ", ".join(f"{c['name']}: {c['kind']} on {c['base_model']}" for c in trained),
        "trained": len(trained),
        "failed": sum(c["status"].startswith("failed") for c in summary.candidates),
        "train_seconds": round(sum(c.get("train_seconds", 0) for c in trained), 1),
        "version": summary.artifact.version,
        "path": {"raw_value": str(summary.artifact.path), "type": "path"},
    }, data_version=summary.artifact.version)


def main() -> None:
    with open_dagster_pipes() as pipes:
        run(pipes)


if __name__ == "__main__":
    main()
