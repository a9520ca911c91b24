"""The lifecycle job, its nightly schedule, and the sensor that discovers new workloads."""

import dagster as dg

from assets import LIFECYCLE_ASSETS, workload_partitions
from resources import LogStoreResource

lifecycle_job = dg.define_asset_job(
    "workload_lifecycle",
    selection=dg.AssetSelection.assets(*LIFECYCLE_ASSETS),
    partitions_def=workload_partitions,
    description="Snapshot, curate, fine-tune, evaluate and deploy one workload.",
)


@dg.schedule(job=lifecycle_job, cron_schedule="0 2 * * *", execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.RUNNING)
def nightly_retrain(context: dg.ScheduleEvaluationContext):
    """Every night, rematerialize the whole lifecycle for every known workload."""
    workloads = context.instance.get_dynamic_partitions(workload_partitions.name)
    if not workloads:
        return dg.SkipReason("no workloads yet: the new_workloads sensor adds them from the log store")
    date = context.scheduled_execution_time.strftime("%Y-%m-%d")
    return [dg.RunRequest(run_key=f"{w}-{date}", partition_key=w) for w in workloads]


@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def new_workloads(context: dg.SensorEvaluationContext, log_store: LogStoreResource):
    """Add a workload partition for every workload that has appeared in the log store."""
    known = set(context.instance.get_dynamic_partitions(workload_partitions.name))
    new = sorted(set(log_store.open().workloads()) - known)
    if not new:
        return dg.SkipReason(f"no new workloads ({len(known)} known)")
    context.log.info(f"new workloads in the log store: {', '.join(new)}")
    return dg.SensorResult(dynamic_partitions_requests=[workload_partitions.build_add_request(new)])
