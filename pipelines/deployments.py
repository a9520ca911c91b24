"""The resources of each deployment. The definitions are the same on one machine and on a cluster; these
differ, and ``pipelines/definitions.py`` picks one set by ``DISTILLERY_DEPLOYMENT`` when the code location loads.

On a cluster every location and secret comes from the environment through ``dg.EnvVar``, so the Dagster UI
shows where each value comes from; ``deploy/dagster-values.yaml`` sets the variables, and docs/kubernetes.md
names each field that changes.
"""

import dagster as dg

from resources import (ArtifactsResource, GatewayResource, JudgeResource, LogStoreResource, MlflowResource,
                       ServingResource, TrainerResource, WorkerLauncherResource)

DEPLOYMENT_VARIABLE = "DISTILLERY_DEPLOYMENT"
LOCAL, CLUSTER = "local", "cluster"

# The run worker's copies of artifact versions, and where the vLLM pods mount the same bucket (deploy/vllm.yaml):
# deployment hands vLLM the adapter's path as the server sees it.
CLUSTER_ARTIFACT_CACHE = "/var/cache/distillery/artifacts"
VLLM_ARTIFACTS_MOUNT = "/mnt/artifacts"
CREDENTIALS_SECRET = "distillery-credentials"


def local_resources() -> dict:
    """One machine: SQLite, folders and processes under $DISTILLERY_HOME (or the URLs its variables name)."""
    return {
        "log_store": LogStoreResource(),
        "artifacts": ArtifactsResource(),
        "mlflow": MlflowResource(),
        "trainer": TrainerResource(),
        "workers": WorkerLauncherResource(),
        "serving": ServingResource(),
        "judge": JudgeResource(),
        "gateway": GatewayResource(),
    }


def cluster_resources() -> dict:
    """Kubernetes: Postgres, an object store, an MLflow server, GPU pods for the workers, a vLLM service."""
    return {
        "log_store": LogStoreResource(url=dg.EnvVar("DISTILLERY_LOG_STORE_URL")),
        "artifacts": ArtifactsResource(root=dg.EnvVar("DISTILLERY_ARTIFACTS_ROOT"), cache_dir=CLUSTER_ARTIFACT_CACHE),
        "mlflow": MlflowResource(tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI"),
                                 artifact_root=dg.EnvVar("DISTILLERY_MLFLOW_ARTIFACT_ROOT")),
        "trainer": TrainerResource(base_model=dg.EnvVar("DISTILLERY_BASE_MODEL")),
        "workers": WorkerLauncherResource(mode="kubernetes", image=dg.EnvVar("DISTILLERY_IMAGE"),
                                          namespace=dg.EnvVar("DISTILLERY_NAMESPACE"), env_secret=CREDENTIALS_SECRET),
        "serving": ServingResource(backend="remote", remote_url=dg.EnvVar("DISTILLERY_VLLM_URL"),
                                   remote_path_map={CLUSTER_ARTIFACT_CACHE: VLLM_ARTIFACTS_MOUNT}),
        "judge": JudgeResource(),
        # The gateway runs beside the applications, not in this chart: a non-default [autopilot] table is named here
        # as a file the run worker can read (docs/kubernetes.md).
        "gateway": GatewayResource(),
    }


DEPLOYMENTS = {LOCAL: local_resources, CLUSTER: cluster_resources}
