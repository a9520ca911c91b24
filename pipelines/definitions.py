"""The one Definitions object: load it with `dagster dev -w workspace.yaml`."""

import dagster as dg

from assets import LIFECYCLE_ASSETS, frontier_traffic, label_balance_check, live_monitoring
from pipelines.automation import lifecycle_automation, lifecycle_job, log_store_watch, monitoring_job
from resources import (ArtifactsResource, JudgeResource, LogStoreResource, MlflowResource, ServingResource,
                       TrainerResource, WorkerLauncherResource)

defs = dg.Definitions(
    assets=[frontier_traffic, *LIFECYCLE_ASSETS, live_monitoring],
    asset_checks=[label_balance_check],
    jobs=[lifecycle_job, monitoring_job],
    sensors=[log_store_watch, lifecycle_automation],
    resources={
        "log_store": LogStoreResource(),
        "artifacts": ArtifactsResource(),
        "mlflow": MlflowResource(),
        "trainer": TrainerResource(),
        "workers": WorkerLauncherResource(),
        "serving": ServingResource(),
        "judge": JudgeResource(),
    },
)
