"""The one Definitions: load it with `dagster dev -w workspace.yaml`."""

import os

import dagster as dg

from assets import LIFECYCLE_ASSETS, frontier_traffic, label_balance_check, live_monitoring, workload_portfolio
from pipelines.automation import lifecycle_automation, lifecycle_job, log_store_watch, monitoring_job, route_changes
from pipelines.deployments import DEPLOYMENT_VARIABLE, DEPLOYMENTS, LOCAL


@dg.definitions
def defs() -> dg.Definitions:
    """The same assets, checks, jobs and sensors everywhere; the resources of the deployment that
    DISTILLERY_DEPLOYMENT names (read when the code location loads, not at import)."""
    deployment = os.environ.get(DEPLOYMENT_VARIABLE) or LOCAL
    if deployment not in DEPLOYMENTS:
        raise ValueError(f"{DEPLOYMENT_VARIABLE}={deployment!r}: must be one of {', '.join(DEPLOYMENTS)}")
    return dg.Definitions(
        assets=[frontier_traffic, *LIFECYCLE_ASSETS, live_monitoring, workload_portfolio],
        asset_checks=[label_balance_check],
        jobs=[lifecycle_job, monitoring_job],
        sensors=[log_store_watch, route_changes, lifecycle_automation],
        resources=DEPLOYMENTS[deployment](),
    )
