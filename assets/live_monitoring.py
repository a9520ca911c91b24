from typing import Iterator

import dagster as dg

from assets.conditions import every_monitoring_tick
from assets.configs import config_from
from assets.deployed_endpoint import deployed_endpoint
from assets.errors import user_errors_as_failures
from assets.eval_report import eval_report
from assets.partitions import workload_partitions
from assets.upstream import recorded_version
from distillery.lifecycle import monitor_live_traffic
from distillery.evaluation import pairwise_judge
from distillery.monitoring import MonitoringPolicy
from resources import ArtifactsResource, GatewayResource, JudgeResource, LogStoreResource

CHECKS = {
    "shadow_agreement": "Sampled shadow answers agree with the frontier's often enough.",
    "prompt_drift": "Live prompts look like the training prompts (PSI of length and embedding clusters).",
    "label_shift": "The frontier's live label distribution is close to the training one (classification).",
    "invalid_answers": "The small model's answers are valid for the workload (label set, JSON object).",
    "hallucination": "The small model does not make things up: extraction values are in the prompt and its fields "
                     "are the frontier's; free text is faithful to the prompt and agrees with the frontier; labels "
                     "are ones the frontier gave similar prompts. A failure while the small model answers callers "
                     "steps the route back.",
    "cascade_coverage": "A cascade route's small model answers about the share of calls alone that evaluation "
                        "measured; a drop beyond the allowed points steps the route back.",
    "audited_agreement": "A cascade's audited calls (covered calls the frontier also answered) agree with the "
                         "frontier; a failure steps the route back.",
}


MonitoringConfig = config_from(MonitoringPolicy, "MonitoringConfig", "When live traffic fails a check.")


# A multi-asset only so that checks may go unreported (can_subset): a check without enough traffic to judge shows
# as not executed in the UI instead of passed.
@dg.multi_asset(
    specs=[dg.AssetSpec("live_monitoring", deps=[deployed_endpoint], kinds={"python"}, group_name="monitoring",
                        automation_condition=every_monitoring_tick,
                        description="The deployed model on live traffic: shadow agreement, invalid answers, prompt "
                        "and label drift, hallucination, a cascade's coverage and audited agreement, money saved, "
                        "the gateway route and its latest events "
                        "(rollbacks included); says when to retrain.")],
    partitions_def=workload_partitions, can_subset=True,
    check_specs=[dg.AssetCheckSpec(name, asset="live_monitoring", description=text) for name, text in CHECKS.items()],
)
def live_monitoring(context: dg.AssetExecutionContext, config: MonitoringConfig,
                    log_store: LogStoreResource, artifacts: ArtifactsResource, judge: JudgeResource,
                    gateway: GatewayResource) -> Iterator[dg.MaterializeResult]:
    policy = MonitoringPolicy(**config.to_core())
    settings = judge.settings()
    with user_errors_as_failures():
        summary = monitor_live_traffic(log_store.open(), artifacts.open(), context.partition_key, policy,
                                       report_version=recorded_version(context, eval_report),
                                       judge=pairwise_judge(settings, judge.api_key) if settings else None,
                                       judge_name=judge.model, stages=gateway.rollout_stages())
    report = summary.report
    measured = MonitoringPolicy.measured(report)
    events = "\n".join(f"- {e.created_at:%Y-%m-%d %H:%M:%S} {e.kind}: {e.from_mode or '-'} -> {e.to_mode} ({e.reason})"
                       for e in summary.route_events) or "none"
    figures = {key: value for key, value in report.as_dict().items() if isinstance(value, (int, float))}
    figures.update({f"hallucination_{key}": value for key, value in report.as_dict()["hallucination"].items()
                    if value is not None})
    figures = {key: round(value, 4) if isinstance(value, float) else value for key, value in figures.items()}
    # Yielded: a multi-asset would take a returned MaterializeResult (a tuple) for its outputs.
    yield dg.MaterializeResult(
        metadata={
            **figures,
            "route": summary.route.label if summary.route else "frontier (no route)",
            "route_events": dg.MetadataValue.md(events),
            "rollbacks": sum(e.kind == "rollback" for e in summary.route_events),
            "retrain_reasons": dg.MetadataValue.json(summary.retrain_reasons),
            "notes": dg.MetadataValue.json(report.notes),
            "version": summary.artifact.version,
        },
        check_results=[dg.AssetCheckResult(check_name=name, passed=reason is None, severity=dg.AssetCheckSeverity.WARN,
                                           description=reason or "within threshold")
                       for name, reason in summary.failures.items() if measured[name]],
    )
