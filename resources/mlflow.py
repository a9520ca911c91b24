import dagster as dg
from pydantic import Field

from distillery.training import Tracker


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking and model registry (runs, adapter artifacts, champion/challenger aliases)."""

    tracking_uri: str | None = Field(
        default=None,
        description="Tracking and registry URI. Empty: $MLFLOW_TRACKING_URI, else SQLite in $DISTILLERY_HOME.",
    )
    artifact_root: str | None = Field(
        default=None, description="Artifact location of new experiments; empty: $DISTILLERY_HOME/mlartifacts."
    )

    def open(self) -> Tracker:
        return Tracker(self.tracking_uri, self.artifact_root)

    def worker_extras(self) -> dict[str, str]:
        """What a worker process needs to record in the same MLflow (``workers.open_stores`` reads it)."""
        tracker = self.open()
        return {"tracking_uri": tracker.tracking_uri, "mlflow_artifact_root": tracker.artifact_root}
