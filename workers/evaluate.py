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

from distillery.evaluation import JUDGE_API_KEY_VARIABLE, CostSettings, GatePolicy, JudgeSettings, pairwise_judge
from distillery.lifecycle import evaluate_adapter
from distillery.pricing import Price
from workers import inline_png, mlflow_links, open_stores, rounded

GATE_CHECK = "gate_passed"
_MONEY_DECIMALS = {"monthly_saving_usd": 2, "payback_months": 1}  # the rest: dollars per 1,000 requests, to 4


def _md(text: str) -> dict:
    return {"raw_value": text, "type": "md"}


def _cascade_metadata(report) -> dict:
    calibration = report.calibration
    figures = {"cascade_note": calibration.note}
    if calibration.cascade:
        figures.update(cascade_threshold=rounded(calibration.cascade.threshold),
                       cascade_measure=calibration.cascade.measure)
    if calibration.test:
        figures.update(cascade_coverage=rounded(calibration.test.coverage),
                       cascade_covered_agreement=rounded(calibration.test.covered_agreement),
                       cascade_covered_agreement_low=rounded(calibration.test.covered_agreement_ci95[0]),
                       cascade_blended_agreement=rounded(calibration.test.blended_agreement))
    return figures


def _students_table(students: list[dict], metric: str) -> str:
    """The candidates side by side, for the asset's metadata (the report has the same with more columns)."""
    lines = [f"| student | kind | base | status | validation {metric} | mode | served rps | $ per 1k | "
             f"test {metric} | chosen |", "|---|---|---|---|---:|---|---:|---:|---:|---|"]
    for s in students:
        trained = s["status"] == "trained"
        lines.append(" | ".join([
            f"| {s['name']}", s["kind"], s["base_model"], s["status"][:80],
            f"{s['headline']:.3f}" if trained else "-", s["mode"] or "-",
            f"{s['requests_per_s']:.1f}" if trained and s["requests_per_s"] else "-",
            f"${s['blended_usd_per_1k']:.4f}" if s.get("blended_usd_per_1k") is not None else "-",
            f"{s['test']['headline']:.3f}" if s.get("test") else "-",
            ("**yes**" if s["chosen"] else "no") + " |"]))
    return "\n".join(lines)


def run(pipes: PipesContext) -> None:
    extras = pipes.extras
    costs = extras["costs"]
    judge = extras.get("judge")
    artifact, report = evaluate_adapter(
        *open_stores(extras), extras["workload"],
        policy=GatePolicy(**extras["gate"]),
        costs=CostSettings(costs["serving_usd_per_hour"], costs["migration_cost_usd"], costs["monthly_requests"],
                           Price(*costs["frontier_price"])),
        batch_size=extras["batch_size"], serving_concurrency=extras["serving_concurrency"],
        judge=pairwise_judge(JudgeSettings(**judge), os.environ.get(JUDGE_API_KEY_VARIABLE, "")) if judge else None,
        on_progress=pipes.log.info, adapter_version=extras["adapter_version"],
    )
    candidate = report.candidate
    tracker = open_stores(extras)[1]
    plots = {f"plot_{png.stem}": inline_png(png) for png in sorted(artifact.path.glob("plots/*.png"))}
    champion = ({"champion_headline": rounded(report.scores["champion"].headline),
                 "champion_model_version": report.champion_version} if report.champion_version else {})
    pipes.report_asset_check(
        GATE_CHECK, passed=report.passed, severity="ERROR",
        # Pipes carries no check description: the verdict is the check's first metadata entry.
        metadata={"verdict": report.verdict, report.headline_metric: rounded(candidate.headline),
                  "reasons": _md("\n".join(f"- {reason}" for reason in report.gate.reasons))})
    low, high = candidate.headline_ci95
    pipes.report_asset_materialization(metadata={
        **plots,
        **{key: round(value, _MONEY_DECIMALS.get(key, 4)) for key, value in report.operations.money().items()},
        "report": _md(report.markdown()),
        "task": report.task,
        "scoring": report.scoring,
        "headline_metric": report.headline_metric,
        "fine_tuned_headline": rounded(candidate.headline),
        "fine_tuned_headline_ci95": f"{low:.3f}-{high:.3f}",
        **({"base_headline": rounded(report.scores["base"].headline)} if "base" in report.scores else {}),
        "student": artifact.manifest["student"],
        "student_kind": artifact.manifest["student_kind"],
        "students": _md(_students_table(report.students, report.headline_metric)),
        **champion,
        **{f"fine_tuned_{name}": rounded(value) for name, value in candidate.metrics.items()},
        "decoding_policy": report.decoding,
        "eval_rows_per_s": round(candidate.rows_per_s, 2),
        "served_requests_per_s": round(report.serving.requests_per_s, 2),
        "served_latency_ms_p50": round(report.serving.latency_ms_p50),
        "served_latency_ms_p95": round(report.serving.latency_ms_p95),
        "served_answers_match_eval": rounded(report.serving.answers_match_eval),
        "test_rows": report.rows,
        "passed": report.passed,
        "verdict": report.verdict,
        "gate_mode": report.gate.mode,
        # the agreement with the frontier the rollout autopilot holds live traffic to (a cascade's: covered rows')
        "live_reference_agreement": rounded(artifact.manifest["agreement"]),
        **_cascade_metadata(report),
        "model_version": artifact.manifest["model_version"],
        **mlflow_links(extras, tracker, extras["workload"], artifact.manifest["mlflow_run_id"],
                       artifact.manifest["model_version"]),
        "version": artifact.version,
        "path": {"raw_value": str(artifact.path), "type": "path"},
    }, data_version=artifact.version)


def main() -> None:
    with open_dagster_pipes() as pipes:
        run(pipes)


if __name__ == "__main__":
    main()
