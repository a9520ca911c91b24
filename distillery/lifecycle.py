"""The five lifecycle steps of a workload, each reading a version of the previous step's artifact.

A step reads the upstream version it is given (the one Dagster recorded for the upstream asset),
else the latest, and refuses a version whose blocking checks failed. Every step publishes through
``ArtifactStore.publish``, so a step that fails leaves the previous version in place. Each function
returns a summary the Dagster asset turns into metadata; nothing here knows about Dagster.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from datasets import DatasetDict, load_from_disk

from distillery import curation, evaluation, monitoring, serving, training
from distillery.errors import DistilleryError
from distillery.evaluation import CostSettings, GatePolicy, compare_costs, small_model_figures
from distillery.routing import CANARY, FRONTIER, SHADOW, SMALL, Approval, AutopilotPolicy, Route, RouteStore, step_back
from distillery.serving import Endpoint, Endpoints
from distillery.settings import validate_workload
from distillery.store import STATUS_OK, Artifact, ArtifactStore, LogStore, load_snapshot, save_snapshot
from distillery.tasks import POLICY_FILE, Cascade, DecodingPolicy
from distillery.training.recipes import recipe_for
from distillery.training import CHALLENGER, CHAMPION, MODEL_ARTIFACT_PATH, Tracker, registered_model_name

RAW, CURATED, ADAPTER, REPORT = "raw_llm_logs", "curated_dataset", "lora_adapter", "eval_report"
DEPLOYED = "deployed_endpoint"

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass
class RawLogsSummary:
    artifact: Artifact
    rows: int
    ok_rows: int
    error_rows: int
    first_log_id: int
    last_log_id: int
    first_at: str
    last_at: str


def snapshot_raw_logs(store: LogStore, artifacts: ArtifactStore, workload: str) -> RawLogsSummary:
    """Freeze the workload's rows as they are now, so later steps see one consistent set."""
    validate_workload(workload)
    rows = store.read(workload, frontier_only=True)
    if rows.empty:
        known = ", ".join(sorted(store.workloads())) or "none"
        raise DistilleryError(
            f"workload {workload!r} has no rows in the log store ({store.engine.url.render_as_string()}); "
            f"workloads with rows: {known}. Capture traffic tagged with this workload, or run `distillery demo`"
        )
    ok = int((rows["status"] == STATUS_OK).sum())
    span = {"first_log_id": int(rows["id"].min()), "last_log_id": int(rows["id"].max()),
            "first_at": str(rows["created_at"].min()), "last_at": str(rows["created_at"].max())}
    with artifacts.publish(workload, RAW, {"rows": len(rows), **span}) as folder:
        save_snapshot(rows, folder / "rows.parquet")
    return RawLogsSummary(artifacts.latest(workload, RAW), len(rows), ok, len(rows) - ok, **span)


def _upstream(artifacts: ArtifactStore, workload: str, stage: str, version: str | None, needed_by: str) -> Artifact:
    """The upstream artifact a step reads: ``version`` when given, else the latest; never one that failed a
    blocking check."""
    artifact = (artifacts.get(workload, stage, version) if version
                else artifacts.latest(workload, stage, needed_by=needed_by))
    for name, check in artifact.manifest.get("blocking_checks", {}).items():
        if not check["passed"]:
            raise DistilleryError(
                f"workload {workload!r}: {stage} version {artifact.version} failed its blocking check {name} "
                f"({check['description']}), so {needed_by} refuses it: fix the cause and rematerialize {stage}")
    return artifact


@dataclass
class CuratedSummary:
    artifact: Artifact
    dataset: DatasetDict
    report: curation.CurationReport
    data_card: str  # Markdown
    checks: dict[str, curation.CheckOutcome]


def build_curated_dataset(artifacts: ArtifactStore, workload: str, *, seed: int, validation_fraction: float,
                          test_fraction: float, min_rows: int, min_train_rows: int, task: str = "auto",
                          labels: list[str] | None = None, json_schema: dict | None = None, scrub_pii: bool = True,
                          max_tokens: int | None = None, count_tokens: Callable[[str], int] | None = None,
                          raw_version: str | None = None, copied_share: float = curation.COPIED_SHARE) -> CuratedSummary:
    """Curate a snapshot and publish the dataset with its data card and its checks' outcomes."""
    raw = _upstream(artifacts, workload, RAW, raw_version, CURATED)
    rows = load_snapshot(raw.path / "rows.parquet")
    dataset, report = curation.curate(rows, workload, seed=seed, validation_fraction=validation_fraction,
                                      test_fraction=test_fraction, min_rows=min_rows, task=task, labels=labels,
                                      json_schema=json_schema, scrub_pii=scrub_pii, max_tokens=max_tokens,
                                      count_tokens=count_tokens, copied_share=copied_share)
    card = curation.data_card(workload, report, dataset)
    checks = curation.blocking_checks(dataset, min_train_rows)
    summary = {k: v for k, v in report.as_dict().items() if k != "log_ids"}
    recorded = {name: {"passed": c.passed, "description": c.description} for name, c in checks.items()}
    manifest = {"raw_version": raw.version, **summary, "blocking_checks": recorded}  # the schema: report.json_schema
    with artifacts.publish(workload, CURATED, manifest) as folder:
        dataset.save_to_disk(str(folder / "dataset"))
        (folder / "log_ids.json").write_text(json.dumps(report.log_ids))
        (folder / "data_card.md").write_text(card)
    return CuratedSummary(artifacts.latest(workload, CURATED), dataset, report, card, checks)


@dataclass
class AdapterSummary:
    artifact: Artifact
    run_id: str
    model_version: str
    registered_model: str
    result: training.TrainingResult


def _decoding_policy(curated_manifest: dict) -> DecodingPolicy:
    """How the workload's answers are decoded: its label set, its JSON schema (or any JSON object; with its copied
    fields grounded in each request's user text), or free text."""
    return DecodingPolicy.for_task(curated_manifest["task"], curated_manifest.get("labels"),
                                   curated_manifest.get("json_schema"), curated_manifest.get("copied_fields") or ())


def _adapter_policy(adapter: Artifact) -> DecodingPolicy:
    policy = DecodingPolicy.load(adapter.path / "adapter")
    if policy is None:
        raise DistilleryError(
            f"lora_adapter {adapter.version} has no {POLICY_FILE} beside its weights (it was trained before "
            "decoding policies were recorded): rematerialize lora_adapter")
    return policy


def train_adapter(artifacts: ArtifactStore, tracker: Tracker, workload: str, base_model: str,
                  settings: dict, run_tags: dict[str, str],
                  on_step: training.StepCallback | None = None,
                  log: Callable[[str], None] = lambda message: None,
                  dataset_version: str | None = None) -> AdapterSummary:
    """Train on the latest curated dataset; record the run and a new model version in MLflow.

    ``settings`` are the ``TrainingConfig`` fields the run sets; the rest come from the task's recipe
    (``training.recipes``), then the defaults. A crashed training of the same dataset version resumes from its
    last checkpoint (kept under the artifact root until the run finishes); the new MLflow run says so in its tags.
    """
    curated = _upstream(artifacts, workload, CURATED, dataset_version, ADAPTER)
    dataset = load_from_disk(str(curated.path / "dataset"))
    source = curated.manifest
    tags = {
        **run_tags,
        "distillery.workload": workload,
        "distillery.dataset_version": curated.version,
        "distillery.dataset_hash": source["content_hash"],
        "distillery.log_id_range": f"{source['first_log_id']}-{source['last_log_id']}",
    }
    decoding = _decoding_policy(source)
    config = training.TrainingConfig(**{**recipe_for(source["task"], len(dataset["train"])), **settings})
    checkpoint_dir = artifacts.scratch(workload, "checkpoints") / curated.version
    with tracker.run(workload, run_name=f"{workload}-{curated.version[:16]}", tags=tags) as run_id:
        tracker.log_params(run_id, {**asdict(config), "base_model": base_model,
                                    "train_rows": len(dataset["train"]), "validation_rows": len(dataset["validation"])})
        tracker.log_dataset(run_id, f"{workload}-curated", source["content_hash"], str(curated.path / "dataset"),
                            {split: len(rows) for split, rows in dataset.items()})

        def record_step(step: int, total: int, loss: float) -> None:
            tracker.log_metrics(run_id, {"train_loss": loss}, step=step)
            if on_step:
                on_step(step, total, loss)

        manifest = {"base_model": base_model, "dataset_version": curated.version, "mlflow_run_id": run_id,
                    "tracking_uri": tracker.tracking_uri, **{k.removeprefix("distillery."): v for k, v in tags.items()}}
        with artifacts.publish(workload, ADAPTER, manifest) as folder:
            result = training.train_lora(dataset["train"], dataset["validation"], base_model, folder / "adapter",
                                         config, on_step=record_step, checkpoint_dir=checkpoint_dir,
                                         labels=list(decoding.labels) or None, log=log)
            decoding.save(folder / "adapter")  # evaluation, the model server and the gateway decode by it
            if result.resumed_from_step:
                tracker.set_tag(run_id, "distillery.resumed_from_step", str(result.resumed_from_step))
            # CPU and memory over time come from MLflow's system-metrics monitor (Tracker.run), not from here.
            metrics = {"train_loss_mean_last_10_steps": result.final_train_loss, "train_seconds": result.seconds,
                       "tokens_per_s": result.tokens_per_s, "train_tokens": result.train_tokens}
            tracker.log_series(run_id, "validation_loss", result.validation_curve)
            tracker.log_metrics(run_id, metrics, step=result.steps)
            model = serving.save_adapter_model(folder / "adapter", base_model,
                                               artifacts.scratch(workload, "mlflow-model") / run_id)
            tracker.log_artifacts(run_id, model, MODEL_ARTIFACT_PATH)
            version = tracker.register_adapter(workload, run_id, tags)
            tracker.describe(run_id, _run_description(workload, curated, version))
            tracker.set_alias(workload, CHALLENGER, version)
            manifest["model_version"] = version
    return AdapterSummary(artifacts.latest(workload, ADAPTER), run_id, version, registered_model_name(workload), result)


def _run_description(workload: str, curated: Artifact, version: str, verdict: str | None = None,
                     headline: str | None = None) -> str:
    """The MLflow run's description: what was trained on what, and what the gate said."""
    source = curated.manifest
    gate = "not evaluated yet." if verdict is None else f"**{verdict}**" + (f" ({headline})" if headline else "")
    return (f"Workload **{workload}**, model version {version}: LoRA fine-tune on dataset version "
            f"`{curated.version}` ({source['train']} train rows, log ids "
            f"{source['first_log_id']}-{source['last_log_id']}, content hash `{source['content_hash']}`).\n\n"
            f"Gate: {gate}")


def _champion_adapter(artifacts: ArtifactStore, tracker: Tracker, workload: str,
                      candidate_version: str) -> tuple[str, Path] | None:
    """The current champion's model version and adapter folder (the artifact store's copy, else MLflow's)."""
    version = tracker.alias_version(workload, CHAMPION)
    if version is None or version == candidate_version:
        return None
    for adapter_version in reversed(artifacts.versions(workload, ADAPTER)):
        adapter = artifacts.get(workload, ADAPTER, adapter_version)
        if adapter.manifest.get("model_version") == version and (adapter.path / "adapter").is_dir():
            return version, adapter.path / "adapter"
    return version, tracker.download_adapter(workload, version, artifacts.scratch(workload, "champion-download"))


def evaluate_adapter(artifacts: ArtifactStore, tracker: Tracker, workload: str, *, policy: GatePolicy,
                     costs: CostSettings = CostSettings(), batch_size: int, serving_concurrency: int = 16,
                     judge: evaluation.Judge | None = None, on_progress: Progress = _quiet,
                     adapter_version: str | None = None) -> tuple[Artifact, evaluation.EvalReport]:
    """Score the latest adapter, its base model and the champion on the held-out split it was never trained on,
    each decoded under the adapter's decoding policy; measure the adapter as the serving engine answers it under
    ``serving_concurrency`` concurrent callers; cost both sides from the logged traffic; record the gate's decision.
    """
    adapter = _upstream(artifacts, workload, ADAPTER, adapter_version, REPORT)
    trained = adapter.manifest
    curated = artifacts.get(workload, CURATED, trained["dataset_version"])
    splits = load_from_disk(str(curated.path / "dataset"))
    decoding = _adapter_policy(adapter)
    champion = _champion_adapter(artifacts, tracker, workload, trained["model_version"])
    report, outputs = evaluation.evaluate(
        splits["test"], splits["validation"], workload, trained["base_model"], adapter.path / "adapter",
        task=curated.manifest["task"],
        policy=policy, champion=champion, batch_size=batch_size, on_progress=on_progress, decoding=decoding,
        serving_concurrency=serving_concurrency, judge=judge)
    served = outputs.served.generations
    small = small_model_figures([g.latency_ms for g in served], [g.prompt_tokens for g in served],
                                [g.completion_tokens for g in served], outputs.served.requests_per_s,
                                usd_per_hour=costs.serving_usd_per_hour, concurrency=serving_concurrency)
    raw = load_snapshot(artifacts.get(workload, RAW, curated.manifest["raw_version"]).path / "rows.parquet")
    estimated = (statistics.fmean(g.prompt_tokens for g in served), statistics.fmean(outputs.reference_tokens))
    coverage = report.gate.cascade["coverage"] if report.gate.cascade else 1.0
    report.operations = compare_costs(raw[raw["status"] == STATUS_OK], small, estimated_frontier_tokens=estimated,
                                      settings=costs, coverage=coverage)
    calibration = report.calibration

    run_id = trained["mlflow_run_id"]
    candidate = report.candidate
    tracker.log_metrics(run_id, {
        "eval_headline": candidate.headline,
        "eval_gap_to_frontier_points": (1 - candidate.headline) * 100,  # the frontier scores 1 on its own answers
        "eval_headline_ci95_low": candidate.headline_ci95[0],
        "eval_headline_ci95_high": candidate.headline_ci95[1],
        "eval_agreement": candidate.agreement,
        "eval_base_headline": report.scores[evaluation.BASE].headline,
        "eval_rows_per_s": candidate.rows_per_s,
        "eval_served_requests_per_s": report.serving.requests_per_s,
        "eval_served_latency_ms_p50": report.serving.latency_ms_p50,
        "eval_served_latency_ms_p95": report.serving.latency_ms_p95,
        "eval_served_answers_match": report.serving.answers_match_eval,
        "eval_gate_passed": float(report.passed),
        **({"eval_cascade_threshold": calibration.cascade.threshold} if calibration.cascade else {}),
        **({"eval_cascade_coverage": calibration.test.coverage,
            "eval_cascade_covered_agreement": calibration.test.covered_agreement,
            "eval_cascade_covered_agreement_ci95_low": calibration.test.covered_agreement_ci95[0],
            "eval_cascade_blended_agreement": calibration.test.blended_agreement} if calibration.test else {}),
        **{f"eval_{name}": value for name, value in candidate.metrics.items()},
        **{f"eval_{name}": value for name, value in report.operations.money().items()},
    })
    history = tracker.metric_by_version(workload, "eval_headline")
    markdown = report.markdown()
    manifest = {"adapter_version": adapter.version, "model_version": trained["model_version"],
                "mlflow_run_id": run_id, "passed": report.passed, "headline_metric": report.headline_metric,
                "headline": candidate.headline, "probe_messages": splits["test"][0]["messages"][:-1],
                "decoding_policy": decoding.record(),
                # beside the policy, so the deployment's route answers in the mode the gate approved
                "mode": report.gate.mode, "cascade": report.cascade.record() if report.cascade else None,
                # what the calibration chose, whatever the mode: an operator may run a full route as this cascade
                "calibrated_cascade": calibration.cascade.record() if calibration.test else None,
                # the agreement with the frontier live traffic is held to (the rollout autopilot's p_eval)
                "agreement": calibration.test.covered_agreement if report.cascade else candidate.agreement}
    with artifacts.publish(workload, REPORT, manifest) as folder:
        (folder / "report.json").write_text(json.dumps(report.as_dict(), indent=2))
        (folder / "report.md").write_text(markdown)
        if report.classification:
            fine_tuned = report.classification[evaluation.CANDIDATE]
            evaluation.confusion_matrix_png(fine_tuned["confusion"], folder / "plots" / "confusion_matrix.png")
            evaluation.per_label_f1_png(fine_tuned["per_label_f1"], folder / "plots" / "per_label_f1.png")
        evaluation.latency_and_cost_png(report.operations, folder / "plots" / "latency_and_cost.png")
        evaluation.metric_by_version_png(history, report.headline_metric, folder / "plots" / "headline_by_version.png")
        evaluation.coverage_curve_png(calibration, folder / "plots" / "coverage_curve.png")
        tracker.log_artifacts(run_id, folder / "plots", "eval_plots")
    tracker.log_text(run_id, markdown, "eval_report.md")
    tracker.describe(run_id, _run_description(workload, curated, trained["model_version"], report.verdict,
                                              f"{report.headline_metric} {candidate.headline:.3f}"))
    return artifacts.latest(workload, REPORT), report


@dataclass
class DeploySummary:
    promoted: bool
    reason: str
    model_version: str
    endpoint: Endpoint | None
    route: Route | None = None


def deploy_adapter(artifacts: ArtifactStore, tracker: Tracker, endpoints: Endpoints, workload: str,
                   routes: RouteStore | None = None, *, adapter_version: str | None = None,
                   report_version: str | None = None) -> DeploySummary:
    """Serve the latest adapter and make it champion, if and only if its report passed.

    With ``routes``, the workload's gateway route points at the new endpoint: a workload still
    on the frontier starts in shadow; one already further along keeps its mode.
    """
    adapter = _upstream(artifacts, workload, ADAPTER, adapter_version, DEPLOYED)
    report = _upstream(artifacts, workload, REPORT, report_version, DEPLOYED)
    verdict = report.manifest
    if verdict["adapter_version"] != adapter.version:
        raise DistilleryError(
            f"workload {workload!r}: eval_report {report.version} scored adapter {verdict['adapter_version']}, "
            f"not lora_adapter {adapter.version}: materialize eval_report before deploying"
        )
    reason = json.loads((report.path / "report.json").read_text())["verdict"]
    version = adapter.manifest["model_version"]
    if not verdict["passed"]:
        return DeploySummary(False, reason, version, endpoints.current(workload))
    decoding = _adapter_policy(adapter)
    evaluated_under = verdict.get("decoding_policy", "missing")
    if evaluated_under == "missing" or DecodingPolicy.from_structured_outputs(evaluated_under) != decoding:
        raise DistilleryError(
            f"workload {workload!r}: eval_report {report.version} did not evaluate adapter {adapter.version} under "
            f"the decoding policy recorded beside it ({decoding.kind}): materialize eval_report before deploying")
    cascade = Cascade.from_record(verdict.get("cascade"))  # the mode the gate approved travels with the route
    approval = Approval(verdict.get("mode", "full"), verdict["agreement"], cascade, version) \
        if "agreement" in verdict else None
    endpoint = endpoints.deploy(workload, adapter.manifest["base_model"], adapter.path / "adapter",
                                model_name=f"{workload}-v{version}", probe_messages=verdict["probe_messages"],
                                policy=decoding, needs_confidence=cascade is not None)
    tracker.promote(workload, version)
    route = None
    if routes is not None:
        current = routes.get(workload)
        mode = SHADOW if current is None or current.mode == FRONTIER else current.mode
        route = routes.set(Route(workload, mode, current.canary_percent if current else 0.0, endpoint.url,
                                 endpoint.model, decoding, cascade, autopilot=bool(current and current.autopilot),
                                 approval=approval),
                           f"deployed model version {version} ({verdict.get('mode', 'full')})")
    return DeploySummary(True, reason, version, endpoint, route)


LIVE = "live_monitoring"
# Live checks that say the data moved (retrain), and those that say the small model must answer less, at once: what
# an answer invents, and a cascade's coverage or audited agreement (the gateway watches those too, over a minute).
RETRAIN_REASONS = ("shadow_agreement", "prompt_drift", "label_shift", "hallucination")
STEP_BACK_REASONS = ("hallucination", "cascade_coverage", "audited_agreement")


@dataclass
class LiveSummary:
    artifact: Artifact
    report: monitoring.LiveReport
    failures: dict[str, str | None]
    retrain_reasons: list[str]
    route: Route | None
    route_events: list


def monitor_live_traffic(store: LogStore, artifacts: ArtifactStore, workload: str,
                         policy: monitoring.MonitoringPolicy = monitoring.MonitoringPolicy(),
                         report_version: str | None = None, judge: evaluation.Judge | None = None,
                         judge_name: str = "", stages: AutopilotPolicy = AutopilotPolicy()) -> LiveSummary:
    """The deployed model's live figures against the data it was trained on, and whether to retrain.

    Drift, disagreement and hallucination are retrain reasons (``log_store_watch`` signals them). A hallucination,
    cascade-coverage or audited-agreement failure while the small model answers callers (canary, small) also steps
    the route back one stage at once (``routing.step_back`` along ``stages``, the gateway's ``[autopilot]`` table, as
    the gateway's own rollback does): the gateway watches a one-minute window, this the whole record.
    """
    report_artifact = _upstream(artifacts, workload, REPORT, report_version, LIVE)
    adapter = artifacts.get(workload, ADAPTER, report_artifact.manifest["adapter_version"])
    curated = artifacts.get(workload, CURATED, adapter.manifest["dataset_version"])
    train = load_from_disk(str(curated.path / "dataset"))["train"]
    operations = json.loads((report_artifact.path / "report.json").read_text()).get("operations") or {}
    cascade = Cascade.from_record(report_artifact.manifest.get("cascade"))
    small_per_1k = (operations.get("small_model") or {}).get("usd_per_1k_requests") or 0.0
    agreement_judge = (lambda requests, frontier, small: judge(requests, frontier, small).win_or_tie_rate) if judge \
        else None
    report = monitoring.live_report(
        store.read(workload), workload, train_prompts=[ex["messages"][:-1] for ex in train],
        train_answers=[ex["messages"][-1]["content"] for ex in train], since_log_id=curated.manifest["last_log_id"],
        task=curated.manifest.get("task"), small_usd_per_request=small_per_1k / 1000, judge=agreement_judge,
        judge_name=judge_name, evaluated_coverage=cascade.coverage if cascade else None,
        min_cascade_calls=policy.min_cascade_calls)
    failures = policy.failures(report)
    reasons = [reason for key, reason in failures.items() if reason and key in RETRAIN_REASONS]
    routes = RouteStore(store.engine)
    route = routes.get(workload)
    failure = next((failures[key] for key in STEP_BACK_REASONS if failures[key]), None)
    if failure and route is not None and route.mode in (CANARY, SMALL):
        route = routes.set(step_back(route, stages), f"live monitoring: {failure}", kind="rollback")
    with artifacts.publish(workload, LIVE, {**report.as_dict(), "retrain_reasons": reasons,
                                            "failures": failures}) as folder:
        (folder / "live.json").write_text(json.dumps(report.as_dict(), indent=2))
    return LiveSummary(artifacts.latest(workload, LIVE), report, failures, reasons, route,
                       routes.events(workload, limit=10))
