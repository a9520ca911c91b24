"""The evaluation, out of the Dagster run worker: a Dagster Pipes worker like ``workers.train_lora``.

``eval_report`` starts it through ``WorkerLauncherResource`` (a local subprocess, or a pod with a GPU
on Kubernetes), because it loads three models and serves the adapter under load:

    python -m workers.evaluate

It reads the workload, the adapter version Dagster recorded, the gate, cost and judge settings, the
artifact root and the MLflow URIs from the Pipes extras (the judge's key from the environment), runs
``distillery.lifecycle.evaluate_adapter``, and reports the report's metadata and the gate check back.
The model server it starts for the serving figures stops before it returns.
"""

from __future__ import annotations

import os

from dagster_pipes import PipesContext, open_dagster_pipes

from distillery.evaluation import JUDGE_API_KEY_VARIABLE, CostSettings, GatePolicy, JudgeSettings, Price, pairwise_judge
from distillery.lifecycle import evaluate_adapter
from workers import open_stores

GATE_CHECK = "gate_passed"


def _md(text: str) -> dict:
    return {"raw_value": text, "type": "md"}


def run(pipes: PipesContext) -> None:
    extras = pipes.extras
    costs = extras["costs"]
    judge = extras.get("judge")
    artifact, report = evaluate_adapter(
        *open_stores(extras), extras["workload"],
        policy=GatePolicy(extras["max_gap_to_frontier"]),
        costs=CostSettings(costs["serving_usd_per_hour"], costs["migration_cost_usd"], costs["monthly_requests"],
                           Price(*costs["frontier_price"])),
        batch_size=extras["batch_size"], serving_concurrency=extras["serving_concurrency"],
        judge=pairwise_judge(JudgeSettings(**judge), os.environ.get(JUDGE_API_KEY_VARIABLE, "")) if judge else None,
        on_progress=pipes.log.info, adapter_version=extras["adapter_version"],
    )
    candidate = report.candidate
    plots = {f"plot_{png.stem}": {"raw_value": str(png), "type": "path"}
             for png in sorted(artifact.path.glob("plots/*.png"))}
    champion = ({"champion_headline": report.scores["champion"].headline,
                 "champion_model_version": report.champion_version} if report.champion_version else {})
    pipes.report_asset_check(
        GATE_CHECK, passed=report.passed, severity="ERROR",
        # Pipes carries no check description: the verdict is the check's first metadata entry.
        metadata={"verdict": report.verdict, report.headline_metric: candidate.headline,
                  "reasons": _md("\n".join(f"- {reason}" for reason in report.gate.reasons))})
    pipes.report_asset_materialization(metadata={
        **plots,
        **report.operations.money(),
        "report": _md(report.markdown()),
        "task": report.task,
        "headline_metric": report.headline_metric,
        "fine_tuned_headline": candidate.headline,
        "fine_tuned_headline_ci95": {"raw_value": list(candidate.headline_ci95), "type": "json"},
        "base_headline": report.scores["base"].headline,
        **champion,
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
        "path": {"raw_value": str(artifact.path), "type": "path"},
    }, data_version=artifact.version)


def main() -> None:
    with open_dagster_pipes() as pipes:
        run(pipes)


if __name__ == "__main__":
    main()
