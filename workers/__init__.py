"""Dagster Pipes workers: the steps that load a model, run out of the Dagster run process."""

from typing import Any

from distillery.store import ArtifactStore
from distillery.training import Tracker


def open_stores(extras: dict[str, Any]) -> tuple[ArtifactStore, Tracker]:
    """The artifact store and MLflow the launching asset uses, from its Pipes extras
    (``ArtifactsResource.worker_extras``, ``MlflowResource.worker_extras``)."""
    return (ArtifactStore(extras["artifacts_root"], extras["artifacts_storage_options"]),
            Tracker(extras["tracking_uri"], extras["mlflow_artifact_root"]))
