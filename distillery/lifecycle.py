"""The five lifecycle steps of a workload, each reading a version of the previous step's artifact.

A step reads the upstream version it is given (the one Dagster recorded for the upstream asset),
else the latest, and refuses a version whose blocking checks failed. Every step publishes through
``ArtifactStore.publish``, so a step that fails leaves the previous version in place. Each function
returns a summary the Dagster asset turns into metadata; nothing here knows about Dagster.
"""

from __future__ import annotations

import json
import statistics
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from datasets import DatasetDict, load_from_disk

from distillery import curation, evaluation, monitoring, serving, training
from distillery.errors import DistilleryError
from distillery.evaluation import CostSettings, GatePolicy, compare_costs, frontier_figures, small_model_figures
from distillery.routing import CANARY, FRONTIER, SHADOW, SMALL, Approval, AutopilotPolicy, Route, RouteStore, step_back
from distillery.serving import Endpoint, Endpoints
from distillery.settings import validate_workload
from distillery.store import STATUS_OK, Artifact, ArtifactStore, LogStore, load_snapshot, save_snapshot
from distillery.students import GENERATIVE, StudentCard
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
    run_id: str  # the training's parent run; each candidate has a child run of its own
    candidates: list[dict]  # per candidate: name, kind, base_model, status, its training figures and run


def _decoding_policy(curated_manifest: dict) -> DecodingPolicy:
    """How the workload's answers are decoded: its label set, its JSON schema (or any JSON object; with its copied
    fields grounded in each request's user text), or free text."""
    return DecodingPolicy.for_task(curated_manifest["task"], curated_manifest.get("labels"),
                                   curated_manifest.get("json_schema"), curated_manifest.get("copied_fields") or ())


def _student_policy(folder: Path, needed_by: str) -> DecodingPolicy:
    policy = DecodingPolicy.load(folder)
    if policy is None:
        raise DistilleryError(
            f"the student in {folder} has no {POLICY_FILE} beside its weights (it was trained before decoding "
            f"policies were recorded), so {needed_by} refuses it: rematerialize lora_adapter")
    return policy


def student_folder(adapter: Artifact, name: str | None = None) -> Path:
    """A trained candidate's folder in a lora_adapter version (one trained before candidates: its ``adapter``)."""
    return adapter.path / CANDIDATES / name if name and (adapter.path / CANDIDATES / name).is_dir() \
        else adapter.path / "adapter"


CANDIDATES = "candidates"  # beside a lora_adapter version's manifest: one folder per trained candidate


def train_adapter(artifacts: ArtifactStore, tracker: Tracker, workload: str, base_model: str,
                  settings: dict, run_tags: dict[str, str],
                  on_step: training.StepCallback | None = None,
                  log: Callable[[str], None] = lambda message: None,
                  dataset_version: str | None = None, candidates: list[dict] | None = None) -> AdapterSummary:
    """Train the workload's candidate students side by side on the latest curated dataset (the task's default list,
    or ``candidates``: ``training.students.parse_candidates``), each in an MLflow run nested under one run for the
    dataset version; evaluation then chooses among them on the validation split.

    ``settings`` are the ``TrainingConfig`` fields the run sets, for the generative student (the rest come from the
    task's recipe, ``training.recipes``, then the defaults); its ``max_seconds`` is the budget of all candidates
    together. A candidate that fails to train (an error, out of memory) is recorded as failed, in its run and the
    artifact, and the others go on; the step fails only when none trained. A crashed generative training of the same
    dataset version resumes from its last checkpoint; its run says so in its tags.
    """
    import time

    from distillery.training.students import check_candidates, default_candidates, parse_candidates, train_candidate

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
    settings = dict(settings)
    budget = float(settings.pop("max_seconds", 0) or 0)
    listed = parse_candidates(candidates, base_model) if candidates else default_candidates(source["task"], base_model)
    listed = [replace(c, settings={**settings, **c.settings}) if c.kind == GENERATIVE else c for c in listed]
    usable, ruled_out = check_candidates(listed, source["task"], decoding)
    recipe = recipe_for(source["task"], len(dataset["train"]))
    checkpoint_dir = artifacts.scratch(workload, "checkpoints") / curated.version
    records = [{**c.record(), "status": f"skipped: {ruled_out[c.label]}"} for c in listed if c.label in ruled_out]
    with tracker.run(workload, run_name=f"{workload}-{curated.version[:16]}", tags=tags) as run_id:
        tracker.log_params(run_id, {"candidates": ", ".join(c.label for c in usable), "budget_seconds": budget,
                                    "train_rows": len(dataset["train"]), "validation_rows": len(dataset["validation"])})
        tracker.log_dataset(run_id, f"{workload}-curated", source["content_hash"], str(curated.path / "dataset"),
                            {split: len(rows) for split, rows in dataset.items()})
        manifest = {"base_model": base_model, "dataset_version": curated.version, "mlflow_run_id": run_id,
                    "tracking_uri": tracker.tracking_uri, "decoding_policy": decoding.record(),
                    **{k.removeprefix("distillery."): v for k, v in tags.items()}}
        with artifacts.publish(workload, ADAPTER, manifest) as folder:
            began = time.monotonic()
            for position, candidate in enumerate(usable):
                left = budget - (time.monotonic() - began)
                share = max(left, 1.0) / (len(usable) - position) if budget else 0.0
                log(f"training candidate {candidate.label} ({candidate.kind} on {candidate.base_model})"
                    + (f" for up to {share:.0f} s" if budget else ""))
                records.append(_train_candidate(tracker, workload, run_id, tags, candidate, dataset, folder, decoding,
                                                share, recipe, checkpoint_dir, artifacts, on_step, log))
            trained = [r for r in records if r["status"] == "trained"]
            if not trained:
                raise DistilleryError(f"workload {workload!r}: no candidate student trained: "
                                      + "; ".join(f"{r['name']}: {r['status']}" for r in records))
            (folder / "candidates.json").write_text(json.dumps(records, indent=2))
            manifest["candidates"] = records
            tracker.describe(run_id, _run_description(workload, curated, records))
    return AdapterSummary(artifacts.latest(workload, ADAPTER), run_id, records)


def _train_candidate(tracker: Tracker, workload: str, parent_run_id: str, tags: dict[str, str], candidate,
                     dataset: DatasetDict, folder: Path, decoding: DecodingPolicy, budget_seconds: float, recipe: dict,
                     checkpoint_dir: Path, artifacts: ArtifactStore, on_step: training.StepCallback | None,
                     log: Callable[[str], None]) -> dict:
    """One candidate in its own MLflow run under the training's: its params, curves and MLflow model; a record of
    it for the artifact (its status says whether it trained)."""
    from distillery.models import resolve_base_model
    from distillery.training.students import candidate_config, train_candidate

    record = {**candidate.record(), "status": "trained"}
    child_tags = {**tags, "distillery.student": candidate.label, "distillery.student_kind": candidate.kind,
                  "distillery.base_model": candidate.base_model}
    try:
        with tracker.run(workload, run_name=f"{workload}-{candidate.label}", tags=child_tags,
                         parent_run_id=parent_run_id) as child:
            record["mlflow_run_id"] = child
            config = candidate_config(candidate, budget_seconds, recipe)
            tracker.log_params(child, {"kind": candidate.kind, "base_model": candidate.base_model, **asdict(config)})

            def record_step(step: int, total: int, loss: float) -> None:
                tracker.log_metrics(child, {"train_loss": loss}, step=step)
                if on_step:
                    on_step(step, total, loss)

            student = folder / CANDIDATES / candidate.label
            try:
                result = train_candidate(candidate, config, dataset["train"], dataset["validation"], student,
                                         decoding, record_step, checkpoint_dir / candidate.label, log)
            except Exception as exc:
                tracker.set_tag(child, "distillery.error", f"{type(exc).__name__}: {exc}"[:5000])
                raise
            figures = {"train_seconds": round(result.seconds, 1), "steps": result.steps,
                       "train_loss_mean_last_10_steps": round(result.final_train_loss, 4),
                       "validation_loss": round(result.validation_loss, 4) if result.validation_loss is not None
                       else None, "device": result.device}
            if getattr(result, "resumed_from_step", 0):
                tracker.set_tag(child, "distillery.resumed_from_step", str(result.resumed_from_step))
            tracker.log_series(child, "validation_loss", getattr(result, "validation_curve", []))
            tracker.log_metrics(child, {k: v for k, v in figures.items() if isinstance(v, (int, float))},
                                step=result.steps)
            model = serving.save_adapter_model(student, resolve_base_model(candidate.base_model),
                                               artifacts.scratch(workload, "mlflow-model") / child)
            tracker.log_artifacts(child, model, MODEL_ARTIFACT_PATH)
            record.update(figures)
    except Exception as exc:  # noqa: BLE001 - a candidate that fails is recorded; the others go on
        log(f"candidate {candidate.label} failed: {type(exc).__name__}: {exc}")
        shutil.rmtree(folder / CANDIDATES / candidate.label, ignore_errors=True)
        record["status"] = f"failed: {type(exc).__name__}: {exc}"[:2000]
    return record


def _run_description(workload: str, curated: Artifact, candidates: list[dict], version: str | None = None,
                     verdict: str | None = None, headline: str | None = None) -> str:
    """The training run's description: what was trained on what, which student evaluation chose, and the gate."""
    source = curated.manifest
    students = ", ".join(f"{c['name']} ({c['kind']} on {c['base_model']}: {c['status']})" for c in candidates)
    gate = "not evaluated yet." if verdict is None else (
        f"model version {version}, **{verdict}**" + (f" ({headline})" if headline else ""))
    return (f"Workload **{workload}**: candidate students {students}, trained on dataset version `{curated.version}` "
            f"({source['train']} train rows, log ids {source['first_log_id']}-{source['last_log_id']}, content hash "
            f"`{source['content_hash']}`).\n\nEvaluation: {gate}")


def _champion_student(artifacts: ArtifactStore, tracker: Tracker, workload: str,
                      candidate_version: str) -> tuple[str, Path, str] | None:
    """The current champion's model version, student folder (the artifact store's copy, else MLflow's) and base."""
    version = tracker.alias_version(workload, CHAMPION)
    if version is None or version == candidate_version:
        return None
    for report_version in reversed(artifacts.versions(workload, REPORT)):
        verdict = artifacts.get(workload, REPORT, report_version).manifest
        if verdict.get("model_version") != version:
            continue
        adapter = artifacts.get(workload, ADAPTER, verdict["adapter_version"])
        folder = student_folder(adapter, verdict.get("student"))
        if folder.is_dir():
            return version, folder, verdict.get("student_base_model") or adapter.manifest["base_model"]
    folder = tracker.download_adapter(workload, version, artifacts.scratch(workload, "champion-download"))
    card = StudentCard.load(folder)
    return version, folder, card.base_model if card else tracker.version_tag(workload, version, "distillery.base_model")


def _trained_candidates(adapter: Artifact) -> list[dict]:
    """A lora_adapter version's candidates; one trained before candidates holds its generative adapter alone."""
    trained = adapter.manifest
    return trained.get("candidates") or [{"name": None, "kind": GENERATIVE, "base_model": trained["base_model"],
                                          "status": "trained", "mlflow_run_id": trained["mlflow_run_id"]}]


def evaluate_adapter(artifacts: ArtifactStore, tracker: Tracker, workload: str, *, policy: GatePolicy,
                     costs: CostSettings = CostSettings(), batch_size: int, serving_concurrency: int = 16,
                     judge: evaluation.Judge | None = None, on_progress: Progress = _quiet,
                     adapter_version: str | None = None) -> tuple[Artifact, evaluation.EvalReport]:
    """Choose the student among the trained candidates on the validation split (``evaluation.selection``: the
    cheapest whose gate mode would pass there), register it as a new model version (alias ``challenger``), then score
    it, its base model (a generative student's) and the champion on the held-out test split it was never trained or
    chosen on, each decoded under the decoding policy; measure it as the serving engine answers it under
    ``serving_concurrency`` concurrent callers; cost both sides from the logged traffic; record the gate's decision.
    Every candidate's figures on both splits are in the report, side by side.
    """
    from distillery.evaluation.selection import StudentFigures, choose_student, measure_student, pair_figures
    from distillery.models import resolve_base_model

    adapter = _upstream(artifacts, workload, ADAPTER, adapter_version, REPORT)
    trained = adapter.manifest
    curated = artifacts.get(workload, CURATED, trained["dataset_version"])
    splits = load_from_disk(str(curated.path / "dataset"))
    task = curated.manifest["task"]
    raw = load_snapshot(artifacts.get(workload, RAW, curated.manifest["raw_version"]).path / "rows.parquet")
    frontier_rows = raw[raw["status"] == STATUS_OK]
    validation = splits["validation"]
    conversations = [row["messages"][:-1] for row in validation]
    references = [row["messages"][-1]["content"] for row in validation]
    # For selection only: ~4 characters a token where the log holds neither costs nor tokens (imported logs).
    frontier_1k = frontier_figures(frontier_rows, price=costs.frontier_price, estimated_tokens=(
        statistics.fmean(len(json.dumps(c)) / 4 for c in conversations) if conversations else 0.0,
        statistics.fmean(len(r) / 4 for r in references) if references else 0.0)).usd_per_1k_requests

    def score(answers) -> tuple[float, tuple[float, float], list[float]]:
        headline, ci95, _, _, items = evaluation.score_answers(task, references, [g.text for g in answers])
        return headline, ci95, evaluation.row_agreement(task, references, [g.text for g in answers], items)

    figures, answers, bases = [], {}, {}
    for record in _trained_candidates(adapter):
        row = StudentFigures(record["name"] or "generative", record["kind"], record["base_model"], record["status"],
                             mlflow_run_id=record.get("mlflow_run_id"))
        figures.append(row)
        if row.status != "trained":
            continue
        folder = student_folder(adapter, record["name"])
        bases[row.name] = (folder, resolve_base_model(record["base_model"]))
        on_progress(f"measuring candidate {row.name} ({row.kind}) on {len(conversations)} validation rows")
        student = serving.load_students({row.name: bases[row.name]})[row.name]
        decoding = _student_policy(folder, REPORT)
        _, answers[row.name] = measure_student(
            row, student, conversations, score, decoding=decoding, gate=policy, usd_per_hour=costs.serving_usd_per_hour,
            frontier_usd_per_1k=frontier_1k, concurrency=serving_concurrency, batch_size=batch_size,
            max_new_tokens=64)
        del student
    chosen = choose_student(figures) if len(conversations) else next(f for f in figures if f.status == "trained")
    measured = [f for f in figures if f.name in answers]
    pair = pair_figures(measured[0], measured[1], answers[measured[0].name], answers[measured[1].name],
                        score(answers[measured[0].name])[2], policy, frontier_1k) if len(measured) >= 2 else None
    folder, base_model = bases[chosen.name]
    decoding = _student_policy(folder, REPORT)
    version_tags = {key: value for key, value in tracker.run_tags(trained["mlflow_run_id"]).items()
                    if key.startswith(("distillery.", "dagster."))}
    version = tracker.register_adapter(workload, chosen.mlflow_run_id, {
        **version_tags, "distillery.adapter_version": adapter.version, "distillery.student": chosen.name,
        "distillery.student_kind": chosen.kind, "distillery.base_model": chosen.base_model})
    tracker.set_alias(workload, CHALLENGER, version)

    champion = _champion_student(artifacts, tracker, workload, version)
    students = serving.load_students({evaluation.CANDIDATE: (folder, base_model),
                                      **({evaluation.CHAMPION: champion[1:]} if champion else {})},
                                     base=evaluation.BASE if chosen.kind == GENERATIVE else None)
    report, outputs = evaluation.evaluate(
        splits["test"], validation, workload, students, task=task,
        policy=policy, champion_version=champion[0] if champion else None, batch_size=batch_size,
        on_progress=on_progress, decoding=decoding, serving_concurrency=serving_concurrency, judge=judge)
    del students
    _test_figures(figures, chosen, report, bases, splits["test"], task, decoding, batch_size, on_progress)
    report.students, report.pair = [f.as_dict() for f in figures], pair
    served = outputs.served.generations
    small = small_model_figures([g.latency_ms for g in served], [g.prompt_tokens for g in served],
                                [g.completion_tokens for g in served], outputs.served.requests_per_s,
                                usd_per_hour=costs.serving_usd_per_hour, concurrency=serving_concurrency)
    estimated = (statistics.fmean(g.prompt_tokens for g in served), statistics.fmean(outputs.reference_tokens))
    coverage = report.gate.cascade["coverage"] if report.gate.cascade else 1.0
    report.operations = compare_costs(frontier_rows, small, estimated_frontier_tokens=estimated, settings=costs,
                                      coverage=coverage)
    calibration = report.calibration

    run_id = chosen.mlflow_run_id
    for row in figures:  # every candidate's figures on its own run: MLflow's compare view shows them side by side
        if row.status == "trained":
            tracker.log_metrics(row.mlflow_run_id, {key: value for key, value in {
                "validation_headline": row.headline, "validation_coverage": row.coverage,
                "served_requests_per_s": row.requests_per_s, "blended_usd_per_1k": row.blended_usd_per_1k,
                "test_headline": row.test.get("headline"), "chosen": float(row.chosen)}.items() if value is not None})
            tracker.set_tag(row.mlflow_run_id, "distillery.selection", row.reason)
    candidate = report.candidate
    tracker.log_metrics(run_id, {
        "eval_headline": candidate.headline,
        "eval_gap_to_frontier_points": (1 - candidate.headline) * 100,  # the frontier scores 1 on its own answers
        "eval_headline_ci95_low": candidate.headline_ci95[0],
        "eval_headline_ci95_high": candidate.headline_ci95[1],
        "eval_agreement": candidate.agreement,
        **({"eval_base_headline": report.scores[evaluation.BASE].headline} if evaluation.BASE in report.scores else {}),
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
    manifest = {"adapter_version": adapter.version, "model_version": version, "student": chosen.name,
                "student_kind": chosen.kind, "student_base_model": base_model,
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
    tracker.describe(trained["mlflow_run_id"], _run_description(
        workload, curated, _trained_candidates(adapter), version, report.verdict,
        f"{chosen.name}, {report.headline_metric} {candidate.headline:.3f}"))
    return artifacts.latest(workload, REPORT), report


def _test_figures(figures: list, chosen, report: evaluation.EvalReport, bases: dict[str, tuple[Path, str]], test,
                  task: str, decoding: DecodingPolicy, batch_size: int, on_progress: Progress) -> None:
    """Each candidate's headline and cascade coverage on the test split, for the report's table: the chosen one's from
    the report, the others' answered here (after the choice, which never reads them)."""
    from distillery.evaluation.selection import CASCADE

    conversations = [row["messages"][:-1] for row in test]
    references = [row["messages"][-1]["content"] for row in test]
    for row in figures:
        if row.status != "trained":
            continue
        if row is chosen:
            row.test = {"headline": report.candidate.headline,
                        **({"coverage": report.calibration.test.coverage} if report.calibration.test else {})}
            continue
        on_progress(f"answering the test split with candidate {row.name} for the report's table")
        student = serving.load_students({row.name: bases[row.name]})[row.name]
        answers = student.answer(conversations, policy=decoding, max_new_tokens=64, batch_size=batch_size)
        row.test = {"headline": evaluation.score_answers(task, references, [g.text for g in answers])[0]}
        cascade = Cascade.from_record(row.cascade)
        if cascade and row.mode == CASCADE:
            row.test["coverage"] = sum(g.confidence(cascade.measure) >= cascade.threshold for g in answers) / len(answers)


@dataclass
class DeploySummary:
    promoted: bool
    reason: str
    model_version: str
    endpoint: Endpoint | None
    route: Route | None = None
    student_kind: str = GENERATIVE


def deploy_adapter(artifacts: ArtifactStore, tracker: Tracker, endpoints: Endpoints, workload: str,
                   routes: RouteStore | None = None, *, adapter_version: str | None = None,
                   report_version: str | None = None) -> DeploySummary:
    """Serve the student the eval report chose and make it champion, if and only if the report passed.

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
    version = verdict["model_version"]
    if not verdict["passed"]:
        return DeploySummary(False, reason, version, endpoints.current(workload),
                             student_kind=verdict.get("student_kind", GENERATIVE))
    folder = student_folder(adapter, verdict.get("student"))
    decoding = _student_policy(folder, DEPLOYED)
    evaluated_under = verdict.get("decoding_policy", "missing")
    if evaluated_under == "missing" or DecodingPolicy.from_structured_outputs(evaluated_under) != decoding:
        raise DistilleryError(
            f"workload {workload!r}: eval_report {report.version} did not evaluate adapter {adapter.version} under "
            f"the decoding policy recorded beside it ({decoding.kind}): materialize eval_report before deploying")
    cascade = Cascade.from_record(verdict.get("cascade"))  # the mode the gate approved travels with the route
    approval = Approval(verdict.get("mode", "full"), verdict["agreement"], cascade, version) \
        if "agreement" in verdict else None
    endpoint = endpoints.deploy(workload, verdict.get("student_base_model") or adapter.manifest["base_model"], folder,
                                model_name=f"{workload}-v{version}", probe_messages=verdict["probe_messages"],
                                policy=decoding, needs_confidence=cascade is not None)
    tracker.promote(workload, version)
    route = None
    if routes is not None:
        current = routes.get(workload)
        mode = SHADOW if current is None or current.mode == FRONTIER else current.mode
        route = routes.set(Route(workload, mode, current.canary_percent if current else 0.0, endpoint.url,
                                 endpoint.model, decoding, cascade, autopilot=bool(current and current.autopilot),
                                 approval=approval, small_api=endpoint.api),
                           f"deployed model version {version} ({verdict.get('mode', 'full')})")
    return DeploySummary(True, reason, version, endpoint, route, verdict.get("student_kind", GENERATIVE))


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
