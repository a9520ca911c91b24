"""The one Definitions object: load it with `dagster dev -w workspace.yaml`."""

import dagster as dg

from assets import LIFECYCLE_ASSETS
from pipelines.automation import lifecycle_job, new_workloads, nightly_retrain
from resources import (ArtifactsResource, JudgeResource, LogStoreResource, MlflowResource, ServingResource,
                       TrainerResource, TrainingLauncherResource)

defs = dg.Definitions(
    assets=LIFECYCLE_ASSETS,
    jobs=[lifecycle_job],
    schedules=[nightly_retrain],
    sensors=[new_workloads],
    resources={
        "log_store": LogStoreResource(),
        "artifacts": ArtifactsResource(),
        "mlflow": MlflowResource(),
        "trainer": TrainerResource(),
        "training_launcher": TrainingLauncherResource(),
        "serving": ServingResource(),
        "judge": JudgeResource(),
    },
)
