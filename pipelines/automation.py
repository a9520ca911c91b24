"""What starts work: the log-store watch (new workloads, the retrain signal) and Dagster's declarative automation.

The assets carry their own ``AutomationCondition`` (``assets/conditions.py``); ``lifecycle_automation`` evaluates
them. The jobs are for runs a person or the CLI starts.
"""

import json

import dagster as dg

from assets import (LIFECYCLE_ASSETS, deployed_endpoint, frontier_traffic, live_monitoring, raw_llm_logs,
                    workload_partitions)
from assets.upstream import latest_materialization
from distillery.routing import RouteStore
from resources import LogStoreResource, MlflowResource

lifecycle_job = dg.define_asset_job(
    "workload_lifecycle",
    selection=dg.AssetSelection.assets(*LIFECYCLE_ASSETS),
    partitions_def=workload_partitions,
    description="Snapshot, curate, fine-tune, evaluate and deploy one workload.",
)

monitoring_job = dg.define_asset_job(
    "live_monitoring_job", selection=dg.AssetSelection.assets(live_monitoring), partitions_def=workload_partitions,
    description="Shadow agreement, drift, invalid answers and money saved for one deployed workload.")

lifecycle_automation = dg.AutomationConditionSensorDefinition(
    "lifecycle_automation", target=dg.AssetSelection.all(), default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    description="Evaluates the assets' automation conditions: a workload retrains when frontier_traffic signals it "
    "(at most nightly), each lifecycle step follows its upstream, and live_monitoring runs hourly once deployed.",
)

NEW_ROWS_TO_RETRAIN = 1000


def _latest_metadata(instance: dg.DagsterInstance, asset: dg.AssetsDefinition, workload: str) -> tuple[int, dict]:
    """The storage id and metadata of the asset's latest materialization for the workload ((0, {}) if none)."""
    record = latest_materialization(instance, asset, workload)
    if record is None:
        return 0, {}
    return record.storage_id, {key: value.value for key, value in record.asset_materialization.metadata.items()}


def build_log_store_watch(new_rows_to_retrain: int = NEW_ROWS_TO_RETRAIN) -> dg.SensorDefinition:
    """The sensor that turns the log store into Dagster events: new workload partitions, and a ``frontier_traffic``
    update per workload when ``new_rows_to_retrain`` frontier answers arrived since its last snapshot or its latest
    live monitoring gave retrain reasons (drift, disagreement). Each signal is recorded once (the cursor)."""

    @dg.sensor(name="log_store_watch", minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"Adds a partition per new workload in the log store; signals frontier_traffic when "
               f"{new_rows_to_retrain} new frontier answers arrived since the last snapshot or live monitoring asked "
               "for a retrain.")
    def log_store_watch(context: dg.SensorEvaluationContext, log_store: LogStoreResource):
        store = log_store.open()
        known = set(context.instance.get_dynamic_partitions(workload_partitions.name))
        new = sorted(set(store.workloads()) - known)
        signalled = json.loads(context.cursor) if context.cursor else {}
        events = []
        for workload in sorted(known):  # a new workload's partition exists from the next tick on
            _, snapshot = _latest_metadata(context.instance, raw_llm_logs, workload)
            last_log_id = snapshot.get("last_log_id", 0)
            monitored_at, monitored = _latest_metadata(context.instance, live_monitoring, workload)
            reasons = []
            fresh = store.frontier_rows_after(workload, last_log_id)
            if fresh >= new_rows_to_retrain:
                reasons.append(f"{fresh} new frontier answers since log id {last_log_id}")
            if monitored.get("retrain_reasons"):
                reasons += monitored["retrain_reasons"]
            signal = f"{last_log_id}:{monitored_at}"
            if reasons and signalled.get(workload) != signal:
                signalled[workload] = signal
                context.log.info(f"{workload}: retrain signalled: " + "; ".join(reasons))
                events.append(dg.AssetMaterialization(frontier_traffic.key, partition=workload, metadata={
                    "new_frontier_answers": fresh, "since_log_id": last_log_id,
                    "reasons": dg.MetadataValue.md("\n".join(f"- {reason}" for reason in reasons))}))
        if not new and not events:
            return dg.SkipReason(f"no new workloads ({len(known)} known) and no retrain signal")
        return dg.SensorResult(
            dynamic_partitions_requests=[workload_partitions.build_add_request(new)] if new else [],
            asset_events=events, cursor=json.dumps(signalled))

    return log_store_watch


log_store_watch = build_log_store_watch()


LIVE_STAGE_TAG, AUTOPILOT_TAG = "distillery.live_stage", "distillery.autopilot"


@dg.sensor(name="route_changes", minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Records each route change (the autopilot's advances and step-backs with their evidence, "
           "rollbacks, a person's settings) as an observation of the workload's deployed_endpoint, and tags the "
           "deployed MLflow model version with its live stage.")
def route_changes(context: dg.SensorEvaluationContext, log_store: LogStoreResource, mlflow: MlflowResource):
    routes = RouteStore(log_store.open().engine)
    events = routes.events(after_id=int(context.cursor or 0), limit=1000)
    if not events:
        return dg.SkipReason("no route changes")
    known = set(context.instance.get_dynamic_partitions(workload_partitions.name))
    observations = [dg.AssetObservation(deployed_endpoint.key, partition=event.workload, metadata={
        "change": event.kind, "from": event.from_mode or "none", "to": event.to_mode, "reason": event.reason,
        "at": event.created_at.isoformat(), **({"evidence": dg.MetadataValue.json(event.evidence)} if event.evidence
                                               else {})})
        for event in events if event.workload in known]
    tracker, current = mlflow.open(), routes.all()
    for workload in sorted({event.workload for event in events}):
        route = current.get(workload)
        if route is None or route.approval is None or route.approval.model_version is None:
            continue
        try:
            tracker.tag_version(workload, route.approval.model_version,
                                {LIVE_STAGE_TAG: route.label, AUTOPILOT_TAG: "on" if route.autopilot else "off"})
        except Exception as exc:  # noqa: BLE001 - MLflow away: the observations still land; the next change retags
            context.log.warning(f"{workload}: could not tag model version {route.approval.model_version}: {exc}")
    return dg.SensorResult(asset_events=observations, cursor=str(events[-1].id))
