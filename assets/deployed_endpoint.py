import dagster as dg

from assets.errors import user_errors_as_failures
from assets.eval_report import eval_report
from assets.partitions import workload_partitions
from distillery.lifecycle import deploy_adapter
from resources import ArtifactsResource, MlflowResource, ServingResource


@dg.asset(partitions_def=workload_partitions, deps=[eval_report], kinds={"python", "mlflow"},
          group_name="lifecycle")
def deployed_endpoint(
    context: dg.AssetExecutionContext, artifacts: ArtifactsResource, mlflow: MlflowResource,
    serving: ServingResource,
) -> dg.MaterializeResult:
    """The workload's served endpoint: the new adapter goes live, and becomes MLflow champion, only if its report passed."""
    with user_errors_as_failures():
        summary = deploy_adapter(artifacts.open(), mlflow.open(), serving.open(), context.partition_key)
    endpoint = summary.endpoint
    if not summary.promoted:
        context.log.warning(f"not promoted: {summary.reason}; the current endpoint (if any) keeps serving")
    return dg.MaterializeResult(
        metadata={
            "promoted": summary.promoted,
            "reason": summary.reason,
            "candidate_model_version": summary.model_version,
            "url": dg.MetadataValue.url(endpoint.url) if endpoint else "none",
            "served_model": endpoint.model if endpoint else "none",
            "adapter_path": dg.MetadataValue.path(endpoint.adapter_path) if endpoint else "none",
            "pid": endpoint.pid if endpoint else 0,
        }
    )
