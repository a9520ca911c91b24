import dagster as dg

from assets.conditions import follow_checked_upstream
from assets.errors import user_errors_as_failures
from assets.eval_report import eval_report
from assets.lora_adapter import lora_adapter
from assets.partitions import workload_partitions
from assets.upstream import recorded_version
from distillery.lifecycle import deploy_adapter
from distillery.routing import RouteStore
from distillery.serving import REMOTE
from resources import ArtifactsResource, LogStoreResource, MlflowResource, ServingResource, WorkerLauncherResource
from resources.workers import KUBERNETES


@dg.asset(partitions_def=workload_partitions, deps=[eval_report], kinds={"python", "mlflow"},
          group_name="lifecycle", automation_condition=follow_checked_upstream)
def deployed_endpoint(
    context: dg.AssetExecutionContext, artifacts: ArtifactsResource, mlflow: MlflowResource,
    serving: ServingResource, log_store: LogStoreResource, workers: WorkerLauncherResource,
) -> dg.MaterializeResult:
    """The workload's served endpoint: the new adapter goes live, becomes MLflow champion and the gateway's small
    model for the workload (in shadow when it was on the frontier), only if its report passed.

    On a cluster (workers in kubernetes mode) the adapter goes to the serving service by URL (backend remote):
    a model server started here would live in the run worker's pod, unreachable, and die with it.
    """
    endpoints = serving.open()
    if workers.mode == KUBERNETES and endpoints.backend != REMOTE:
        raise dg.Failure(
            f"WorkerLauncherResource.mode is kubernetes but ServingResource.backend is {endpoints.backend!r}: on a "
            "cluster set backend='remote' and remote_url to the vLLM service (deploy/vllm.yaml), so no model server "
            "starts in the run worker's pod", allow_retries=False)
    with user_errors_as_failures():
        summary = deploy_adapter(artifacts.open(), mlflow.open(), endpoints, context.partition_key,
                                 RouteStore(log_store.open().engine),
                                 adapter_version=recorded_version(context, lora_adapter),
                                 report_version=recorded_version(context, eval_report))
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
            "student_kind": summary.student_kind,
            **({"serving_note": endpoint.note} if endpoint and endpoint.note else {}),
            "pid": endpoint.pid if endpoint else 0,
            "gateway_route": summary.route.label if summary.route else "unchanged",
            "autopilot": ("on" if summary.route.autopilot else "off") if summary.route else "unchanged",
        }
    )
