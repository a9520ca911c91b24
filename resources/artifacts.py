from typing import Any

import dagster as dg
from pydantic import Field

from distillery.store import ArtifactStore


class ArtifactsResource(dg.ConfigurableResource):
    """Where each lifecycle step publishes its versioned output (snapshots, datasets, adapters, reports)."""

    root: str | None = Field(default=None, description="A folder, or an object-store URL (s3://bucket/prefix) that "
                             "workers on other machines reach too; empty: $DISTILLERY_HOME/artifacts.")
    storage_options: dict[str, str] = Field(
        default_factory=dict, description="fsspec options of the object store, e.g. {'endpoint_url': "
        "'http://minio:9000'} for an S3-compatible server. Credentials come from AWS_ACCESS_KEY_ID / "
        "AWS_SECRET_ACCESS_KEY in the environment (a Secret on Kubernetes), never from here.")
    cache_dir: str | None = Field(default=None, description="Object store: the local copies of the versions "
                                  "read; empty: $DISTILLERY_HOME/artifact-cache.")

    def open(self) -> ArtifactStore:
        return ArtifactStore(self.root, self.storage_options, self.cache_dir)

    def worker_extras(self) -> dict[str, Any]:
        """What a worker process needs to open the same store, with its own cache (``workers.open_stores``)."""
        return {"artifacts_root": self.open().location, "artifacts_storage_options": dict(self.storage_options)}
