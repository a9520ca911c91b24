"""The one Definitions object: load it with `dagster dev -w workspace.yaml`."""

import dagster as dg

from assets import LIFECYCLE_ASSETS, label_balance_check, live_monitoring
from pipelines.automation import (hourly_monitoring, lifecycle_job, monitoring_job, new_workloads, nightly_retrain,
                                  retrain_when_needed)
from resources import (ArtifactsResource, JudgeResource, LogStoreResource, MlflowResource, ServingResource,
                       TrainerResource, TrainingLauncherResource)

defs = dg.Definitions(
    assets=[*LIFECYCLE_ASSETS, live_monitoring],
    asset_checks=[label_balance_check],
    jobs=[lifecycle_job, monitoring_job],
    schedules=[nightly_retrain, hourly_monitoring],
    sensors=[new_workloads, retrain_when_needed],
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
