"""The lifecycle job, its nightly schedule, and the sensor that discovers new workloads."""

import dagster as dg

from assets import LIFECYCLE_ASSETS, live_monitoring, workload_partitions
from distillery.lifecycle import LIVE
from resources import ArtifactsResource, LogStoreResource

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


monitoring_job = dg.define_asset_job(
    "live_monitoring_job", selection=dg.AssetSelection.assets(live_monitoring), partitions_def=workload_partitions,
    description="Shadow agreement, drift, invalid answers and money saved for one deployed workload.")


@dg.schedule(job=monitoring_job, cron_schedule="0 * * * *", execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.RUNNING)
def hourly_monitoring(context: dg.ScheduleEvaluationContext, artifacts: ArtifactsResource):
    """Every hour, the live figures of every workload that has an evaluation report (and so may be deployed)."""
    store = artifacts.open()
    workloads = [w for w in context.instance.get_dynamic_partitions(workload_partitions.name)
                 if store.versions(w, "eval_report")]
    if not workloads:
        return dg.SkipReason("no evaluated workloads yet")
    hour = context.scheduled_execution_time.strftime("%Y-%m-%dT%H")
    return [dg.RunRequest(run_key=f"{w}-{hour}", partition_key=w) for w in workloads]


@dg.sensor(job=lifecycle_job, minimum_interval_seconds=300, default_status=dg.DefaultSensorStatus.RUNNING)
def retrain_when_needed(context: dg.SensorEvaluationContext, artifacts: ArtifactsResource):
    """Retrain a workload when its latest live figures say so: drift, disagreement, or enough new rows."""
    store = artifacts.open()
    requests = []
    for workload in context.instance.get_dynamic_partitions(workload_partitions.name):
        if not store.versions(workload, LIVE):
            continue
        latest = store.latest(workload, LIVE)
        reasons = latest.manifest.get("retrain_reasons") or []
        if reasons:
            context.log.info(f"{workload}: retraining because " + "; ".join(reasons))
            # One run per monitoring result: the same result never triggers twice.
            requests.append(dg.RunRequest(run_key=f"{workload}-{latest.version}", partition_key=workload,
                                          tags={"distillery/retrain_reasons": "; ".join(reasons)[:1000]}))
    return requests or dg.SkipReason("no workload needs retraining")
