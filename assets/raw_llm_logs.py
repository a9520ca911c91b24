import dagster as dg

from assets.conditions import retrain_when_signalled
from assets.errors import user_errors_as_failures
from assets.partitions import workload_partitions
from distillery.lifecycle import snapshot_raw_logs
from resources import ArtifactsResource, LogStoreResource


frontier_traffic = dg.AssetSpec(
    "frontier_traffic", partitions_def=workload_partitions, group_name="capture", kinds={"sqlalchemy"},
    description="The frontier answers the gateway logs for the workload. The log_store_watch sensor records an update "
    "when enough new ones arrived since the last snapshot, or when live monitoring asked for a retrain.",
)


@dg.asset(partitions_def=workload_partitions, deps=[frontier_traffic], kinds={"sqlalchemy", "parquet"},
          group_name="lifecycle", automation_condition=retrain_when_signalled)
def raw_llm_logs(
    context: dg.AssetExecutionContext, log_store: LogStoreResource, artifacts: ArtifactsResource
) -> dg.MaterializeResult:
    """The workload's captured request/response rows, frozen as a snapshot of the log store."""
    with user_errors_as_failures():
        summary = snapshot_raw_logs(log_store.open(), artifacts.open(), context.partition_key)
    return dg.MaterializeResult(
        metadata={
            "rows": summary.rows,
            "ok_rows": summary.ok_rows,
            "error_rows": summary.error_rows,
            "log_id_range": f"{summary.first_log_id}-{summary.last_log_id}",
            "last_log_id": summary.last_log_id,
            "time_range": f"{summary.first_at} .. {summary.last_at}",
            "version": summary.artifact.version,
            "path": dg.MetadataValue.path(str(summary.artifact.path)),
        },
        data_version=dg.DataVersion(summary.artifact.version),
    )
