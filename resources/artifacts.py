import dagster as dg
from pydantic import Field

from distillery.store import ArtifactStore


class ArtifactsResource(dg.ConfigurableResource):
    """Where each lifecycle step publishes its versioned output (snapshots, datasets, adapters, reports)."""

    root: str | None = Field(default=None, description="Folder; empty: $DISTILLERY_HOME/artifacts.")

    def open(self) -> ArtifactStore:
        return ArtifactStore(self.root)
