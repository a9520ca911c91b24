import dataclasses

import dagster as dg
from pydantic import Field

from assets.conditions import follow_upstream
from assets.configs import config_from
from assets.lora_adapter import lora_adapter
from assets.partitions import workload_partitions
from assets.upstream import recorded_version
from distillery.evaluation import JUDGE_API_KEY_VARIABLE, CostSettings, GatePolicy
from resources import ArtifactsResource, JudgeResource, MlflowResource, WorkerLauncherResource
from resources.workers import EVALUATE
from workers.evaluate import GATE_CHECK


_COSTS = CostSettings()
EvalConfig = config_from(
    GatePolicy, "EvalConfig", "The gate, and how the small model is measured and priced.",
    scaled={"max_gap_to_frontier": ("max_gap_to_frontier_points", 100, "points (5: 0.05)")},
    batch_size=(int, Field(default=32, description="Rows generated together.")),
    serving_concurrency=(int, Field(default=16, description="Concurrent callers when the fine-tuned model is served "
                                    "for its price and latency.")),
    serving_usd_per_hour=(float, Field(default=_COSTS.serving_usd_per_hour,
                                       description="Hourly price of the small model's serving machine.")),
    migration_cost_usd=(float, Field(default=_COSTS.migration_cost_usd,
                                     description="One-off cost of the migration, for the payback.")),
    monthly_requests=(int | None, Field(default=None, description="Requests per month for the saving; empty: the "
                                        "rate in the logged traffic.")),
    frontier_input_usd_per_million=(float, Field(
        default=_COSTS.frontier_price.input_per_million,
        description="Frontier price for logged exchanges that carry no logged cost (imported logs).")),
    frontier_output_usd_per_million=(float, Field(default=_COSTS.frontier_price.output_per_million,
                                                  description="Same, per million answer tokens.")),
)


@dg.asset(
    partitions_def=workload_partitions, deps=[lora_adapter], kinds={"pytorch", "mlflow"}, group_name="lifecycle",
    check_specs=[dg.AssetCheckSpec(GATE_CHECK, asset="eval_report", blocking=True, automation_condition=follow_upstream,
                                   partitions_def=workload_partitions,
                                   description="The cut-over gate, on the intervals' bounds: full (the whole traffic within "
                                   "the margin of the frontier) or cascade (the confidently answered share within it), "
                                   "and better than the champion on the same rows. Failing stops deployed_endpoint.")],
    automation_condition=follow_upstream, pool="gpu",
)
def eval_report(
    context: dg.AssetExecutionContext, config: EvalConfig, artifacts: ArtifactsResource,
    mlflow: MlflowResource, judge: JudgeResource, workers: WorkerLauncherResource,
) -> dg.MaterializeResult:
    """Base, fine-tuned and champion model against the frontier's answers on the held-out split; costs; the gate.

    Runs out of process (workers/evaluate.py through Dagster Pipes), like training: it loads three models.
    """
    judge_settings = judge.settings()
    return workers.launch(context, EVALUATE, extras={
        "workload": context.partition_key,
        "adapter_version": recorded_version(context, lora_adapter),
        "gate": config.to_core(),
        "costs": {"serving_usd_per_hour": config.serving_usd_per_hour, "migration_cost_usd": config.migration_cost_usd,
                  "monthly_requests": config.monthly_requests,
                  "frontier_price": [config.frontier_input_usd_per_million, config.frontier_output_usd_per_million]},
        "batch_size": config.batch_size,
        "serving_concurrency": config.serving_concurrency,
        "judge": judge_settings and dataclasses.asdict(judge_settings),
        **artifacts.worker_extras(),
        **mlflow.worker_extras(),
    }, env={JUDGE_API_KEY_VARIABLE: judge.api_key} if judge.api_key else None)
