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
    ui_url: str = Field(default="http://127.0.0.1:5001",
                        description="The MLflow UI, for links from Dagster metadata to runs and model versions.")
    dagster_ui_url: str = Field(default="http://127.0.0.1:3000",
                                description="The Dagster UI, for links from MLflow runs back to their Dagster run.")

    def open(self) -> Tracker:
        return Tracker(self.tracking_uri, self.artifact_root)

    def worker_extras(self) -> dict[str, str]:
        """What a worker process needs to record in the same MLflow (``workers.open_stores`` reads it)."""
        tracker = self.open()
        return {"tracking_uri": tracker.tracking_uri, "mlflow_artifact_root": tracker.artifact_root,
                "mlflow_ui_url": self.ui_url.rstrip("/")}

    def dagster_run_tags(self, context: dg.AssetExecutionContext) -> dict[str, str]:
        """Tags that tie an MLflow run to the Dagster run that made it (the URL opens it in the Dagster UI)."""
        return {"dagster.run_id": context.run.run_id, "dagster.partition": context.partition_key,
                "dagster.run_url": f"{self.dagster_ui_url.rstrip('/')}/runs/{context.run.run_id}"}
