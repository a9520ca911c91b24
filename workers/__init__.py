"""Dagster Pipes workers: the steps that load a model, run out of the Dagster run process.

Also what both report back the same way: links to MLflow, plots inline, numbers rounded.
"""

import base64
from pathlib import Path
from typing import Any

from distillery.store import ArtifactStore
from distillery.training import Tracker, registered_model_name


def open_stores(extras: dict[str, Any]) -> tuple[ArtifactStore, Tracker]:
    """The artifact store and MLflow the launching asset uses, from its Pipes extras
    (``ArtifactsResource.worker_extras``, ``MlflowResource.worker_extras``)."""
    return (ArtifactStore(extras["artifacts_root"], extras["artifacts_storage_options"]),
            Tracker(extras["tracking_uri"], extras["mlflow_artifact_root"]))


def mlflow_links(extras: dict[str, Any], tracker: Tracker, workload: str, run_id: str, version: str) -> dict:
    """Pipes metadata: the MLflow run and the registered model version, as links into the MLflow UI."""
    ui = extras["mlflow_ui_url"]
    experiment = tracker.client.get_run(run_id).info.experiment_id
    return {"mlflow_run": {"raw_value": f"{ui}/#/experiments/{experiment}/runs/{run_id}", "type": "url"},
            "mlflow_model_version": {"raw_value": f"{ui}/#/models/{registered_model_name(workload)}/versions/{version}",
                                     "type": "url"}}


def inline_png(path: Path) -> dict:
    """Pipes metadata: a PNG embedded in Markdown, so it renders in the Dagster UI wherever the UI runs."""
    data = base64.b64encode(path.read_bytes()).decode()
    return {"raw_value": f"![{path.stem}](data:image/png;base64,{data})", "type": "md"}


def rounded(value: Any, digits: int = 4) -> Any:
    """A float to ``digits`` significant digits (0.03301271440235634 -> 0.03301); other values unchanged."""
    if isinstance(value, float) and value:
        return float(f"{value:.{digits}g}")
    return value
