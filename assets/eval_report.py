import dagster as dg
from pydantic import Field

from assets.conditions import follow_upstream
from assets.errors import user_errors_as_failures
from assets.lora_adapter import lora_adapter
from assets.partitions import workload_partitions
from assets.upstream import recorded_version
from distillery.evaluation import CostSettings, GatePolicy, Price
from distillery.lifecycle import evaluate_adapter
from resources import ArtifactsResource, JudgeResource, MlflowResource

GATE_CHECK = "gate_passed"


class EvalConfig(dg.Config):
    max_gap_to_frontier_points: float = Field(
        default=5.0, description="Promote only if the headline metric is at most this many points below the "
        "frontier's (which scores 100 on its own answers).")
    batch_size: int = Field(default=32, description="Rows generated together.")
    serving_concurrency: int = Field(
        default=16, description="Concurrent callers when the fine-tuned model is served for its price and latency.")
    serving_usd_per_hour: float = Field(default=1.0, description="Hourly price of the small model's serving machine.")
    migration_cost_usd: float = Field(default=5000.0, description="One-off cost of the migration, for the payback.")
    monthly_requests: int | None = Field(
        default=None, description="Requests per month for the saving; empty: the rate in the logged traffic.")
    frontier_input_usd_per_million: float = Field(
        default=2.50, description="Frontier price for logged exchanges that carry no logged cost (imported logs).")
    frontier_output_usd_per_million: float = Field(default=10.00, description="Same, per million answer tokens.")


@dg.asset(
    partitions_def=workload_partitions, deps=[lora_adapter], kinds={"pytorch", "mlflow"}, group_name="lifecycle",
    check_specs=[dg.AssetCheckSpec(GATE_CHECK, asset="eval_report", blocking=True, automation_condition=follow_upstream,
                                   partitions_def=workload_partitions,
                                   description="The cut-over gate: within the margin of the frontier and not worse "
                                   "than the champion beyond the interval. Failing stops deployed_endpoint.")],
    automation_condition=follow_upstream, pool="gpu",
)
def eval_report(
    context: dg.AssetExecutionContext, config: EvalConfig, artifacts: ArtifactsResource,
    mlflow: MlflowResource, judge: JudgeResource,
) -> dg.MaterializeResult:
    """Base, fine-tuned and champion model against the frontier's answers on the held-out split; costs; the gate."""
    costs = CostSettings(
        serving_usd_per_hour=config.serving_usd_per_hour, migration_cost_usd=config.migration_cost_usd,
        monthly_requests=config.monthly_requests,
        frontier_price=Price(config.frontier_input_usd_per_million, config.frontier_output_usd_per_million))
    with user_errors_as_failures():
        artifact, report = evaluate_adapter(
            artifacts.open(), mlflow.open(), context.partition_key,
            policy=GatePolicy(config.max_gap_to_frontier_points / 100), costs=costs, batch_size=config.batch_size,
            serving_concurrency=config.serving_concurrency, judge=judge.open(), on_progress=context.log.info,
            adapter_version=recorded_version(context, lora_adapter),
        )
    candidate = report.candidate
    plots = {f"plot_{png.stem}": dg.MetadataValue.path(str(png)) for png in sorted(artifact.path.glob("plots/*.png"))}
    return dg.MaterializeResult(
        metadata={
            **plots,
            **report.operations.money(),
            "report": dg.MetadataValue.md(report.markdown()),
            "task": report.task,
            "headline_metric": report.headline_metric,
            "fine_tuned_headline": candidate.headline,
            "fine_tuned_headline_ci95": dg.MetadataValue.json(list(candidate.headline_ci95)),
            "base_headline": report.scores["base"].headline,
            **({"champion_headline": report.scores["champion"].headline,
                "champion_model_version": report.champion_version} if report.champion_version else {}),
            **{f"fine_tuned_{name}": value for name, value in candidate.metrics.items()},
            "decoding_policy": report.decoding,
            "eval_rows_per_s": candidate.rows_per_s,
            "served_requests_per_s": report.serving.requests_per_s,
            "served_latency_ms_p50": report.serving.latency_ms_p50,
            "served_latency_ms_p95": report.serving.latency_ms_p95,
            "served_answers_match_eval": report.serving.answers_match_eval,
            "test_rows": report.rows,
            "passed": report.passed,
            "verdict": report.verdict,
            "model_version": artifact.manifest["model_version"],
            "version": artifact.version,
            "path": dg.MetadataValue.path(str(artifact.path)),
        },
        check_results=[dg.AssetCheckResult(
            check_name=GATE_CHECK, passed=report.passed, severity=dg.AssetCheckSeverity.ERROR,
            description=report.verdict,
            metadata={"reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in report.gate.reasons)),
                      report.headline_metric: candidate.headline},
        )],
        data_version=dg.DataVersion(artifact.version),
    )
