"""Dagster resources: one per external system, each a thin wrapper over the core."""

from resources.artifacts import ArtifactsResource
from resources.gateway import GatewayResource
from resources.judge import JudgeResource
from resources.log_store import LogStoreResource
from resources.mlflow import MlflowResource
from resources.serving import ServingResource
from resources.trainer import TrainerResource
from resources.workers import WorkerLauncherResource

__all__ = ["ArtifactsResource", "GatewayResource", "JudgeResource", "LogStoreResource", "MlflowResource",
           "ServingResource", "TrainerResource", "WorkerLauncherResource"]
