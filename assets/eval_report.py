import dagster as dg
from pydantic import Field

from assets.errors import user_errors_as_failures
from assets.lora_adapter import lora_adapter
from assets.partitions import workload_partitions
from distillery.lifecycle import evaluate_adapter
from resources import ArtifactsResource, MlflowResource


class EvalConfig(dg.Config):
    min_agreement: float = Field(
        default=0.6, description="Exact-match agreement with the frontier the fine-tuned model needs to be promoted."
    )
    batch_size: int = Field(default=16, description="Rows generated together.")
    constrain_to_labels: bool = Field(
        default=True, description="Classification workloads: decode only strings of the label set (both models)."
    )


@dg.asset(partitions_def=workload_partitions, deps=[lora_adapter], kinds={"pytorch", "mlflow"},
          group_name="lifecycle")
def eval_report(
    context: dg.AssetExecutionContext, config: EvalConfig, artifacts: ArtifactsResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Base and fine-tuned model against the frontier's answers on the held-out test split, with the gate verdict."""
    with user_errors_as_failures():
        artifact, report = evaluate_adapter(
            artifacts.open(), mlflow.open(), context.partition_key, threshold=config.min_agreement,
            batch_size=config.batch_size, constrain_to_labels=config.constrain_to_labels,
            on_progress=context.log.info,
        )
    plots = {f"plot_{png.stem}": dg.MetadataValue.path(str(png)) for png in sorted(artifact.path.glob("plots/*.png"))}
    classification = ({"fine_tuned_macro_f1": report.classification["fine-tuned"]["macro_f1"]}
                      if report.classification else {})
    return dg.MaterializeResult(
        metadata={
            **plots,
            **classification,
            "report": dg.MetadataValue.md(report.markdown()),
            "fine_tuned_agreement": report.candidate.agreement,
            "fine_tuned_agreement_ci95": dg.MetadataValue.json(list(report.candidate.agreement_ci95)),
            "base_agreement": report.scores["base"].agreement,
            "agreement_gain_points": round(100 * (report.candidate.agreement - report.scores["base"].agreement), 1),
            "latency_ms_p50": report.candidate.latency_ms_p50,
            "test_rows": report.rows,
            "passed": report.passed,
            "verdict": report.verdict,
            "model_version": artifact.manifest["model_version"],
            "version": artifact.version,
            "path": dg.MetadataValue.path(str(artifact.path)),
        }
    )
