"""The five assets materialized in-process on a tiny model, with real SQLite, MLflow and server processes."""

import datetime
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import mlflow
import openai
import pytest

from assets import (LIFECYCLE_ASSETS, curated_dataset, deployed_endpoint, eval_report, frontier_traffic,
                    label_balance_check, live_monitoring, lora_adapter, raw_llm_logs, workload_partitions,
                    workload_portfolio)
from distillery.demo import (QUEUES, ROUTER_TOOLS, TOOL_WORKLOAD, WORKLOAD, demo_messages, send_demo_traffic,
                             tool_messages, walk_cutover)
from distillery.demo.walkthrough import _gateway_to_frontier
from distillery.routing import RouteStore
from distillery.serving import Endpoints
from distillery.store import LogStore
from distillery.tasks import POLICY_FILE
from distillery.training import CHALLENGER, CHAMPION, Tracker, registered_model_name
from pipelines.automation import build_log_store_watch
from pipelines.definitions import defs
from resources import (ArtifactsResource, GatewayResource, JudgeResource, LogStoreResource, MlflowResource,
                       ServingResource, TrainerResource, WorkerLauncherResource)

# The generative student alone: these tests follow its path through the lifecycle (test_students_side_by_side, below,
# trains a classifier beside it).
FAST_TRAINING = {"lora_adapter": {"config": {"max_steps": 3, "batch_size": 8, "rank": 4, "alpha": 8,
                                             "candidates": [{"kind": "generative"}]}}}


def _ops(max_gap_points: float) -> dict:
    # A few dozen test rows and a retrained twin of the champion: evidence minimums lowered, and a challenger not
    # worse beyond noise replaces the champion (tests/test_evaluation.py holds the defaults to account).
    return {"ops": {**FAST_TRAINING, "eval_report": {"config": {
        "max_gap_to_frontier_points": max_gap_points, "monthly_requests": 300_000, "min_test_rows": 1,
        "require_gain_over_champion": False}}}}


@pytest.fixture
def resources(distillery_home, tiny_model_dir):
    yield {
        "log_store": LogStoreResource(),
        "artifacts": ArtifactsResource(),
        "mlflow": MlflowResource(),
        "trainer": TrainerResource(base_model=tiny_model_dir),
        "serving": ServingResource(startup_timeout_s=120),
        "workers": WorkerLauncherResource(),
        "judge": JudgeResource(), "gateway": GatewayResource(),
    }
    for endpoint in Endpoints().all():
        Endpoints().stop(endpoint.workload)


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def _capture_demo_traffic(calls: int) -> None:
    assert send_demo_traffic(calls, concurrency=2).written == calls


def _materialize(selection, instance, resources, workload=WORKLOAD, run_config=None):
    if workload not in instance.get_dynamic_partitions(workload_partitions.name):
        instance.add_dynamic_partitions(workload_partitions.name, [workload])
    return dg.materialize(selection, partition_key=workload, instance=instance, resources=resources,
                          run_config=run_config or {}, raise_on_error=False)


def _metadata(result: dg.ExecuteInProcessResult, asset) -> dict:
    [event] = result.asset_materializations_for_node(asset.op.name)
    return {key: value.value for key, value in event.metadata.items()}


def _gate_check(result: dg.ExecuteInProcessResult):
    [check] = [c for c in result.get_asset_check_evaluations() if c.check_name == "gate_passed"]
    return check


def _failure_message(result: dg.ExecuteInProcessResult) -> str:
    [failure] = [e for e in result.all_events if e.is_step_failure]
    return failure.step_failure_data.error.message


def test_the_whole_lifecycle_twice(resources, instance):
    _capture_demo_traffic(80)
    first = _materialize(LIFECYCLE_ASSETS, instance, resources, run_config=_ops(max_gap_points=100))
    assert first.success

    raw = _metadata(first, raw_llm_logs)
    assert raw["rows"] == 80 and raw["error_rows"] == 0
    trained = _metadata(first, lora_adapter)
    assert trained["trained"] == 1 and trained["failed"] == 0 and trained["student_kinds"].startswith("generative: ")
    assert "| generative | generative |" in trained["candidates"] and "| trained | 3 |" in trained["candidates"]
    tracker = Tracker()
    [child] = tracker.client.search_runs([tracker.client.get_run(trained["mlflow_run_id"]).info.experiment_id],
                                         f"tags.mlflow.parentRunId = '{trained['mlflow_run_id']}'")
    report = _metadata(first, eval_report)
    assert (report["model_version"], report["student"], report["student_kind"]) == ("1", "generative", "generative")
    assert "| fine-tuned |" in report["report"] and report["passed"] is True
    # a few validation rows: no cascade threshold is chosen from them, and the report says so
    assert report["gate_mode"] == "full" and "under the 100 a threshold is chosen from" in report["cascade_note"]
    assert report["plot_coverage_curve"].startswith("![coverage_curve](data:image/png;base64,")
    # Plots are embedded, so they render in the UI on any machine; links go to the MLflow UI.
    assert report["plot_confusion_matrix"].startswith("![confusion_matrix](data:image/png;base64,iVBOR")
    assert 0 <= report["fine_tuned_macro_f1"] <= 1
    assert report["mlflow_run"].endswith(f"/runs/{child.info.run_id}") and report["mlflow_run"].startswith(
        "http://127.0.0.1:5001/#/experiments/")
    assert report["mlflow_model_version"].endswith(f"/#/models/{registered_model_name(WORKLOAD)}/versions/1")
    assert "| generative | generative |" in report["students"] and "**yes**" in report["students"]
    assert report["headline_metric"] == "accuracy" and "champion_headline" not in report
    # The demo's gateway logged a cost per call; the local model costs its measured share of a $1/hour machine.
    assert report["frontier_usd_per_1k"] > 0 and report["small_model_usd_per_1k"] > 0
    assert report["monthly_saving_usd"] == pytest.approx(
        (report["frontier_usd_per_1k"] - report["small_model_usd_per_1k"]) * 300, rel=1e-2)
    assert _gate_check(first).passed
    deployed = _metadata(first, deployed_endpoint)
    assert deployed["promoted"] is True and deployed["gateway_route"] == "shadow"
    routes = RouteStore(LogStore().engine)
    route = routes.get(WORKLOAD)
    assert route.small_url == deployed["url"] and set(route.policy.labels) <= set(QUEUES) and route.policy.labels
    # What the gate approved travels with the route: the autopilot's ceiling and the agreement it holds traffic to.
    assert (route.approval.mode, route.approval.model_version, route.autopilot) == ("full", "1", False)
    assert route.approval.agreement == pytest.approx(report["live_reference_agreement"], abs=1e-3)
    live = _materialize([live_monitoring], instance, resources)
    assert live.success
    monitored = _metadata(live, live_monitoring)
    assert monitored["route"] == "shadow" and "deployed model version 1" in monitored["route_events"]
    assert monitored["live_rows"] == 0 and monitored["retrain_reasons"] == []
    assert live.get_asset_check_evaluations() == []  # no traffic yet: no check has a figure, none shows as passed
    client = openai.OpenAI(base_url=deployed["url"], api_key="local", max_retries=0)
    assert deployed["served_model"] == f"{WORKLOAD}-v1"
    answer = client.chat.completions.create(model=deployed["served_model"], messages=demo_messages("I was charged twice"),
                                            max_tokens=4)
    # The server applies the label policy recorded beside the adapter, as evaluation did: a label, never free text.
    assert answer.choices[0].message.content in QUEUES

    parent = tracker.client.get_run(trained["mlflow_run_id"])  # the dataset version's run; the student its child
    run = tracker.client.get_run(child.info.run_id)
    for tags in (parent.data.tags, run.data.tags):
        assert tags["dagster.run_id"] == first.run_id and tags["dagster.partition"] == WORKLOAD
        assert tags["dagster.run_url"] == f"http://127.0.0.1:3000/runs/{first.run_id}"
    assert run.data.tags["distillery.student_kind"] == "generative" and run.data.metrics["chosen"] == 1.0
    assert run.data.params["rank"] == "4" and "train_loss" in run.data.metrics and "eval_agreement" in run.data.metrics
    assert [h.step for h in tracker.client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2, 3]
    assert "adapter_model.safetensors" in {a.path.split("/")[-1] for a in tracker.client.list_artifacts(
        run.info.run_id, "model/artifacts/adapter")}
    # Promotion: v1 is champion and no longer challenger.
    assert tracker.alias_version(WORKLOAD, CHAMPION) == "1" and tracker.alias_version(WORKLOAD, CHALLENGER) is None
    # The registered version loads with MLflow's own loader and answers as the served endpoint does.
    mlflow.set_registry_uri(tracker.tracking_uri)
    mlflow.set_tracking_uri(tracker.tracking_uri)
    loaded = mlflow.pyfunc.load_model(f"models:/{registered_model_name(WORKLOAD)}@champion")
    tickets = [demo_messages(t) for t in ("I was charged twice", "My parcel never arrived", "I can't log in")]
    served = [client.chat.completions.create(model=deployed["served_model"], messages=m, max_tokens=4)
              .choices[0].message.content for m in tickets]
    assert loaded.predict(tickets, params={"max_tokens": 4}) == served
    assert loaded.metadata.get_params_schema().to_dict()[0]["name"] == "max_tokens"  # params reach predict
    experiment = tracker.client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "finetuning"  # the UI opens it on its runs
    description = parent.data.tags["mlflow.note.content"]
    assert f"dataset version `{run.data.tags['distillery.dataset_version']}`" in description
    assert "Evaluation: model version 1, **PROMOTE" in description and "generative (generative on" in description
    assert {a.path for a in tracker.client.list_artifacts(run.info.run_id, "eval_plots")} == {
        "eval_plots/confusion_matrix.png", "eval_plots/per_label_f1.png", "eval_plots/latency_and_cost.png",
        "eval_plots/headline_by_version.png", "eval_plots/coverage_curve.png"}
    assert run.data.tags["distillery.dataset_hash"]
    # One validation-loss series; system metrics are MLflow's own time series.
    assert "validation_loss_curve" not in run.data.metrics and "validation_loss" in run.data.metrics
    assert any(key.startswith("system/cpu_utilization") for key in run.data.metrics)
    assert run.data.params["lora_layers"] == "0" and run.data.params["lr_schedule"] == "cosine"
    [dataset] = parent.inputs.dataset_inputs
    assert dataset.dataset.name == f"{WORKLOAD}-curated" and dataset.tags[0].value == "training"
    assert run.data.tags["distillery.dataset_hash"].startswith(dataset.dataset.digest)
    # trained out of process, by the Pipes worker
    assert ArtifactsResource().open().latest(WORKLOAD, "lora_adapter").manifest["candidates"][0]["device"] == "cpu"

    second = _materialize(LIFECYCLE_ASSETS, instance, resources, run_config=_ops(max_gap_points=100))
    assert second.success
    retrained = _metadata(second, lora_adapter)
    assert _metadata(second, eval_report)["model_version"] == "2"
    assert retrained["mlflow_run_id"] != trained["mlflow_run_id"]
    version = tracker.client.get_model_version(registered_model_name(WORKLOAD), "2")
    assert tracker.client.get_run(version.run_id).data.tags["mlflow.parentRunId"] == retrained["mlflow_run_id"]
    assert version.tags["dagster.run_id"] == second.run_id and version.tags["distillery.student_kind"] == "generative"
    assert tracker.alias_version(WORKLOAD, CHAMPION) == "2" and tracker.alias_version(WORKLOAD, CHALLENGER) is None
    # v1, the champion then, was scored on the same rows; the same data and seed trained the same adapter.
    rescored = _metadata(second, eval_report)
    assert rescored["champion_model_version"] == "1"
    assert rescored["champion_headline"] == rescored["fine_tuned_headline"]
    assert [v for v, _ in tracker.metric_by_version(WORKLOAD, "eval_headline")] == ["1", "2"]
    redeployed = _metadata(second, deployed_endpoint)
    # v2 was loaded into the running server beside v1, which stays loaded for an instant rollback.
    assert redeployed["url"] == deployed["url"] and redeployed["served_model"] == f"{WORKLOAD}-v2"
    assert {m.id for m in client.models.list()} >= {f"{WORKLOAD}-v1", f"{WORKLOAD}-v2"}
    assert routes.get(WORKLOAD).small_model == f"{WORKLOAD}-v2"
    assert len(Endpoints().all()) == 1
    # The report priced the small model from the serving engine, whose answers were the evaluated ones.
    assert rescored["decoding_policy"] == "labels" and rescored["served_answers_match_eval"] == 1.0
    assert rescored["served_requests_per_s"] > 0 and rescored["served_latency_ms_p50"] > 0

    # An adapter without its recorded decoding policy is never deployed: nothing says how to serve it.
    policy_file = Path(redeployed["adapter_path"]) / POLICY_FILE
    recorded = policy_file.read_text()
    policy_file.unlink()
    missing = _materialize([deployed_endpoint], instance, resources)
    assert not missing.success and f"no {POLICY_FILE} beside its weights" in _failure_message(missing)
    assert routes.get(WORKLOAD).small_model == f"{WORKLOAD}-v2"  # the route did not move
    policy_file.write_text(recorded)

    # The demo's cut-over walk through a live gateway. The tiny model's answers are not queue names, so each
    # small-model answer is invalid: the caller gets the frontier's, and the route rolls back.
    steps = walk_cutover(calls_per_step=6, say=lambda _: None)
    assert [step.route for step in steps] == ["shadow", "canary 50%", "small", "small, server dead"]
    assert all(step.failed == 0 for step in steps)
    assert any(event.kind == "rollback" for event in routes.events(WORKLOAD))
    assert routes.get(WORKLOAD).mode == "shadow" and Endpoints().current(WORKLOAD) is not None


def test_a_refused_candidate_stops_the_deploy_and_deploying_a_stale_report_is_refused(resources, instance):
    _capture_demo_traffic(40)
    result = _materialize(LIFECYCLE_ASSETS, instance, resources, run_config=_ops(max_gap_points=0))
    # The gate's blocking check fails: the run fails and deployed_endpoint is never materialized.
    assert not result.success
    check = _gate_check(result)
    assert not check.passed and "points below the frontier" in check.metadata["verdict"].value
    assert _metadata(result, eval_report)["passed"] is False
    assert not result.asset_materializations_for_node(deployed_endpoint.op.name)
    assert Tracker().alias_version(WORKLOAD, CHAMPION) is None

    # Materialized on its own (outside a run with the check), the deploy still refuses the failed report.
    alone = _materialize([deployed_endpoint], instance, resources)
    assert alone.success
    deployed = _metadata(alone, deployed_endpoint)
    assert deployed["promoted"] is False and deployed["reason"].startswith("REFUSE")
    assert Endpoints().current(WORKLOAD) is None

    assert _materialize([lora_adapter], instance, resources, run_config={"ops": FAST_TRAINING}).success
    stale = _materialize([deployed_endpoint], instance, resources)
    assert not stale.success
    assert "materialize eval_report before deploying" in _failure_message(stale)


def test_an_unknown_workload_is_named_in_the_failure(resources, instance):
    _capture_demo_traffic(5)
    result = _materialize([raw_llm_logs], instance, resources, workload="invoice-extract")
    assert not result.success
    message = _failure_message(result)
    assert "workload 'invoice-extract' has no rows" in message and WORKLOAD in message


def test_too_few_rows_stops_curation_without_a_dataset(resources, instance):
    _capture_demo_traffic(5)
    result = _materialize(LIFECYCLE_ASSETS[:2], instance, resources)
    assert not result.success
    assert f"workload '{WORKLOAD}' has 5 usable rows" in _failure_message(result)
    assert ArtifactsResource().open().versions(WORKLOAD, "curated_dataset") == []


def _tick(sensor, instance, resources, cursor=None):
    """One evaluation of the sensor, its partitions and asset events applied to the instance as the daemon would."""
    result = sensor(dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor))
    if isinstance(result, dg.SkipReason):
        return result, cursor
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    for event in result.asset_events:
        instance.report_runless_asset_event(event)
    return result, result.cursor


def _requested(evaluation) -> set[str]:
    return {f"{asset.key.to_user_string()}[{partition}]" for asset in [*LIFECYCLE_ASSETS, live_monitoring]
            for partition in evaluation.get_requested_partitions(asset.key)}


def test_new_rows_signal_a_retrain_that_the_nightly_tick_bounds_and_the_clock_alone_never_starts(resources, instance):
    watch = build_log_store_watch(new_rows_to_retrain=5)
    assert isinstance(_tick(watch, instance, resources)[0], dg.SkipReason)
    _capture_demo_traffic(3)
    result, cursor = _tick(watch, instance, resources)
    assert list(result.dynamic_partitions_requests[0].partition_keys) == [WORKLOAD]
    # 3 new frontier answers are below the threshold: no signal, and nothing runs at the nightly tick.
    assert isinstance(_tick(watch, instance, resources, cursor)[0], dg.SkipReason)
    night = datetime.datetime(2026, 11, 28, 1, 59, tzinfo=datetime.timezone.utc)
    first = dg.evaluate_automation_conditions(defs(), instance, evaluation_time=night)
    after_tick = dg.evaluate_automation_conditions(
        defs(), instance, evaluation_time=night + datetime.timedelta(minutes=2), cursor=first.cursor)
    assert after_tick.total_requested == 0

    _capture_demo_traffic(2)
    result, cursor = _tick(watch, instance, resources, cursor)
    [signal] = result.asset_events
    assert signal.asset_key == frontier_traffic.key and signal.metadata["new_frontier_answers"].value == 5
    assert isinstance(_tick(watch, instance, resources, cursor)[0], dg.SkipReason)  # each signal once

    # The signal came after tonight's tick was handled: the whole lifecycle is requested at the next evaluation
    # (one period has passed since the last handled tick), in one tick, with monitoring after the deploy.
    signalled = dg.evaluate_automation_conditions(defs(), instance, evaluation_time=night + datetime.timedelta(hours=1),
                                                  cursor=after_tick.cursor)
    assert _requested(signalled) == {f"{asset.key.to_user_string()}[{WORKLOAD}]"
                                     for asset in [*LIFECYCLE_ASSETS, live_monitoring]}, _requested(signalled)
    assert signalled.get_num_requested(workload_portfolio.key) == 1  # the fleet view follows any workload's signal
    # Requested once: the next evaluation (no new signal, no new tick) asks for nothing.
    again = dg.evaluate_automation_conditions(defs(), instance, evaluation_time=night + datetime.timedelta(hours=2),
                                              cursor=signalled.cursor)
    assert again.total_requested == 0


def test_on_a_cluster_deployment_goes_to_the_serving_service_and_never_starts_a_server_here(resources, instance):
    on_cluster = {**resources, "workers": WorkerLauncherResource(mode="kubernetes", image="registry.example/d:1")}
    result = _materialize([deployed_endpoint], instance, on_cluster)
    assert "ServingResource.backend is 'local': on a cluster set backend='remote'" in _failure_message(result)
    assert Endpoints().all() == []


def test_definitions_load_with_the_lifecycle_and_monitoring_in_one_graph():
    dg.Definitions.validate_loadable(defs())
    graph = defs().resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == {"frontier_traffic", "raw_llm_logs", "curated_dataset", "lora_adapter", "eval_report",
                    "deployed_endpoint", "live_monitoring", "workload_portfolio"}
    assert graph.get(dg.AssetKey("workload_portfolio")).parent_keys == {frontier_traffic.key,
                                                                        dg.AssetKey("live_monitoring")}
    assert not graph.get(dg.AssetKey("workload_portfolio")).partitions_def
    assert graph.get(dg.AssetKey("raw_llm_logs")).parent_keys == {frontier_traffic.key}
    pools = {key.to_user_string(): graph.get(key).pools for key in graph.get_all_asset_keys()}
    assert pools["lora_adapter"] == pools["eval_report"] == {"gpu"} and not pools["live_monitoring"]
    assert graph.get(dg.AssetKey("deployed_endpoint")).parent_keys == {dg.AssetKey("eval_report")}
    assert graph.get(dg.AssetKey("live_monitoring")).parent_keys == {dg.AssetKey("deployed_endpoint")}
    assert defs().resolve_job_def("workload_lifecycle").partitions_def == workload_partitions
    assert defs().resolve_job_def("live_monitoring_job").partitions_def == workload_partitions
    # Every sensor, schedule, job and automation condition says what it does in the UI.
    repository = defs().get_repository_def()
    described = [*repository.sensor_defs, *repository.schedule_defs, *repository.get_all_jobs()]
    assert all(d.description for d in described if not d.name.startswith("__")), [d.name for d in described]
    conditions = [graph.get(key).automation_condition for key in graph.get_all_asset_keys()]
    assert all(c.get_label() for c in conditions if c is not None)


def _worker_error(instance, run_id: str) -> str:
    """The error a Pipes worker ended with, as Dagster recorded it."""
    [closed] = [entry.dagster_event for entry in instance.all_logs(run_id)
                if entry.dagster_event and "closed with exception" in (entry.dagster_event.message or "")]
    return closed.event_specific_data.error.message


def test_a_failed_blocking_check_stops_training_in_the_same_run_and_alone(resources, instance):
    _capture_demo_traffic(40)
    run_config = {"ops": {"curated_dataset": {"config": {"min_train_rows": 1000}}, **FAST_TRAINING}}
    result = _materialize([*LIFECYCLE_ASSETS[:3], label_balance_check], instance, resources, run_config=run_config)
    assert not result.success
    checks = {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
              for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}
    assert checks == {"enough_rows": False, "no_pii_in_train": True, "no_test_leakage": True}
    # A failed blocking check fails the step, so nothing downstream of it runs, not even the label_balance check.
    assert not result.asset_materializations_for_node(lora_adapter.op.name)
    rejected = _metadata(result, curated_dataset)["version"]

    # Alone, outside the run that held the check, training refuses the version too, naming the check.
    alone = _materialize([lora_adapter], instance, resources, run_config={"ops": FAST_TRAINING})
    assert not alone.success
    refusal = _worker_error(instance, alone.run_id)
    assert f"curated_dataset version {rejected} failed its blocking check enough_rows" in refusal
    assert ArtifactsResource().open().versions(WORKLOAD, "lora_adapter") == []

    # A version that passes is what Dagster records; training reads that one, not the latest folder.
    passing = _materialize([curated_dataset], instance, resources)
    accepted = _metadata(passing, curated_dataset)["version"]
    store = ArtifactsResource().open()
    with store.publish(WORKLOAD, "curated_dataset", store.get(WORKLOAD, "curated_dataset", rejected).manifest):
        pass  # a newer folder, written outside Dagster
    assert store.latest(WORKLOAD, "curated_dataset").version not in (accepted, rejected)
    trained = _materialize([lora_adapter], instance, resources, run_config={"ops": FAST_TRAINING})
    assert trained.success
    assert store.latest(WORKLOAD, "lora_adapter").manifest["dataset_version"] == accepted

    # The non-blocking check reruns alone on the recorded version, with its own threshold.
    strict = {"ops": {label_balance_check.node_def.name: {"config": {"max_ratio": 1.0}}}}
    rerun = defs().resolve_job_def("workload_lifecycle").execute_in_process(
        op_selection=[label_balance_check.node_def.name], partition_key=WORKLOAD, instance=instance, run_config=strict)
    [evaluation] = rerun.get_asset_check_evaluations()
    assert rerun.success and not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert "largest/smallest label ratio" in evaluation.description


def test_training_errors_reach_dagster_from_the_worker_and_bad_configs_never_start_one(resources, instance):
    # No curated dataset recorded yet: the asset stops before any worker starts.
    result = _materialize([lora_adapter], instance, resources, run_config={"ops": FAST_TRAINING})
    assert "curated_dataset has no materialization for 'support-triage' yet" in _failure_message(result)
    # A recorded version that is gone from the artifact store: the worker's error is the step's failure.
    _capture_demo_traffic(40)
    curated = _materialize([raw_llm_logs, curated_dataset], instance, resources)
    version = _metadata(curated, curated_dataset)["version"]
    shutil.rmtree(ArtifactsResource().open().get(WORKLOAD, "curated_dataset", version).path)
    result = _materialize([lora_adapter], instance, resources, run_config={"ops": FAST_TRAINING})
    assert not result.success
    assert f"has no curated_dataset version {version!r}" in _worker_error(instance, result.run_id)
    bad = {"ops": {"lora_adapter": {"config": {"lr_schedule": "warm"}}}}
    result = _materialize([lora_adapter], instance, resources, run_config=bad)
    assert "lr_schedule must be one of" in _failure_message(result)


def test_an_extraction_workload_from_dstc8_is_scored_with_extraction_metrics(resources, instance, shared_data,
                                                                              tmp_path):
    import json

    from distillery.capture import import_logs

    # 150 of the 377 records keep the test short; the slots come from the files beside the one imported.
    records = json.loads((shared_data / "dstc8_spans" / "Buses_1" / "test.json").read_text())[:150]
    (tmp_path / "Buses_1").mkdir()
    (tmp_path / "Buses_1" / "test.json").write_text(json.dumps(records))
    store = LogStore()
    store.upgrade()
    assert import_logs(store, tmp_path / "Buses_1" / "test.json", "buses", "dstc8").imported == 150
    result = _materialize(LIFECYCLE_ASSETS[:4], instance, resources, workload="buses",
                          run_config=_ops(max_gap_points=100))
    assert result.success
    report = _metadata(result, eval_report)
    assert report["task"] == "extraction" and report["headline_metric"] == "field_f1"
    assert {"fine_tuned_json_valid_rate", "fine_tuned_field_precision", "fine_tuned_field_recall",
            "fine_tuned_exact_record_match"} <= set(report)
    assert "| json_valid_rate |" in report["report"]
    # Every slot is a span of the user's text: curation marks them copied, and every model decodes them grounded.
    assert set(_metadata(result, curated_dataset)["copied_fields"]) == {"to_location", "leaving_date", "from_location"}
    assert "grounded: from_location, leaving_date, to_location copy the user's text" in report["report"]
    assert report["fine_tuned_unsupported_value_rate"] == 0 and "| unsupported_value_rate |" in report["report"]
    assert "Per-field F1, the fine-tuned model's lowest first:" in report["report"]
    # Imported logs carry no usage: the frontier's cost is estimated from counted tokens, and says so.
    assert "no usage logged" in report["report"] and report["frontier_usd_per_1k"] > 0


def test_a_tool_call_workload_goes_through_the_lifecycle_and_in_small_the_caller_gets_the_small_models_calls(
        resources, instance):
    import dataclasses
    import json

    from distillery.gateway import WORKLOAD_HEADER
    from distillery.routing import SMALL

    assert send_demo_traffic(60, concurrency=2, workload=TOOL_WORKLOAD, messages=tool_messages, max_tokens=40,
                             tools=ROUTER_TOOLS).written == 60
    result = _materialize(LIFECYCLE_ASSETS, instance, resources, workload=TOOL_WORKLOAD,
                          run_config=_ops(max_gap_points=100))
    assert result.success, _failure_message(result)
    assert _metadata(result, curated_dataset)["task"] == "tool_call"
    report = _metadata(result, eval_report)
    assert report["task"] == "tool_call" and report["headline_metric"] == "field_f1"
    assert {"fine_tuned_name_accuracy", "fine_tuned_arguments_f1", "fine_tuned_field_f1"} <= set(report)
    assert "| name_accuracy |" in report["report"] and "function names exact" in report["report"]
    routes = RouteStore(LogStore().engine)
    routes.set(dataclasses.replace(routes.get(TOOL_WORKLOAD), mode=SMALL), "test: all traffic to the small model")
    assert routes.get(TOOL_WORKLOAD).policy.tool_calls
    with _gateway_to_frontier(None, None, route_refresh_s=0.05) as gateway:
        client = openai.OpenAI(base_url=gateway.url, api_key="x", max_retries=0,
                               default_headers={WORKLOAD_HEADER: TOOL_WORKLOAD})
        answers = [client.chat.completions.create(model="frontier-standin", messages=tool_messages(ticket),
                                                  tools=ROUTER_TOOLS, tool_choice="required", max_tokens=40)
                   for ticket in ("I was charged twice", "my parcel is late")]
    rows = LogStore().read(TOOL_WORKLOAD).tail(2)
    # The tiny model's answers are decoded under the schema of the call's tools: always a valid call.
    assert list(rows["served_by"]) == ["small", "small"]
    for answer in answers:
        [call] = answer.choices[0].message.tool_calls
        assert call.function.name == "route_ticket" and json.loads(call.function.arguments)["queue"] in QUEUES
        assert answer.model == routes.get(TOOL_WORKLOAD).small_model


def test_distillery_run_reaches_the_job_through_run_lifecycle_and_reports_a_failed_step(distillery_home, tmp_path,
                                                                                         monkeypatch):
    """The command line's one way into Dagster: the run is launched against the code location into $DAGSTER_HOME's
    instance (a daemon started for it, as none runs); a workload with no rows stops at raw_llm_logs with a message
    saying what to do, and the command exits 1."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    command = [sys.executable, "-m", "distillery.cli", "run", "no-rows-yet"]
    result = subprocess.run(command, env=os.environ, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "workload 'no-rows-yet' has no rows in the log store" in output
    assert "the lifecycle run for 'no-rows-yet' failed" in output
    with dg.DagsterInstance.get() as instance:
        [run] = instance.get_runs()
        assert run.job_name == "workload_lifecycle" and run.tags["dagster/partition"] == "no-rows-yet"
        assert run.status == dg.DagsterRunStatus.FAILURE
        # Launched against the code location, as the UI launches runs: the job's Runs tab lists it (the UI filters
        # a job's runs by its code location) and it re-executes from the UI.
        assert run.remote_job_origin.location_name == "distillery"
        assert instance.get_runs(dg.RunsFilter(job_name="workload_lifecycle",
                                               tags={"dagster/code_location": "distillery"})) == [run]


def test_students_side_by_side_the_chosen_one_deployed_and_the_cascade_escalating_on_its_confidence(resources,
                                                                                                    instance):
    """Three candidates through Dagster: the generative student, a classifier on the bundled encoder, and one that
    cannot train (a generative student on an encoder). The failure is recorded and the others go on, each an MLflow
    run under the dataset version's; the classifier wins on the validation split (the random tiny generative model
    would not pass a 70-point margin), is registered, deployed, and answers through the gateway with the confidence
    the cascade escalates on."""
    from dataclasses import replace

    from distillery.models import BUNDLED_ENCODER, resolve_base_model
    from distillery.demo import STANDIN_MODEL
    from distillery.routing import SMALL
    from distillery.tasks import LABEL_PROBABILITY, Cascade, confidence

    _capture_demo_traffic(120)
    training = {"max_steps": 2, "batch_size": 8, "rank": 4, "alpha": 8, "candidates": [
        {"kind": "generative"}, {"kind": "classifier", "settings": {"epochs": 12, "batch_size": 16}},
        {"kind": "generative", "name": "broken", "base_model": resolve_base_model(BUNDLED_ENCODER)}]}
    gate = {"max_gap_to_frontier_points": 70, "min_test_rows": 1, "min_calibration_rows": 10,
            "require_gain_over_champion": False, "monthly_requests": 300_000}
    result = _materialize(LIFECYCLE_ASSETS, instance, resources,
                          run_config={"ops": {"lora_adapter": {"config": training}, "eval_report": {"config": gate}}})
    assert result.success
    trained = _metadata(result, lora_adapter)
    assert (trained["trained"], trained["failed"]) == (2, 1) and "classifier: classifier on" in trained["student_kinds"]
    tracker = Tracker()
    experiment = tracker.client.get_run(trained["mlflow_run_id"]).info.experiment_id
    children = {run.data.tags["distillery.student"]: run for run in tracker.client.search_runs(
        [experiment], f"tags.mlflow.parentRunId = '{trained['mlflow_run_id']}'")}
    assert set(children) == {"generative", "classifier", "broken"}
    assert children["broken"].info.status == "FAILED" and children["broken"].data.tags["distillery.error"]
    assert children["classifier"].data.params["kind"] == "classifier" and "train_loss" in children["classifier"].data.metrics

    report = _metadata(result, eval_report)
    assert (report["student"], report["student_kind"]) == ("classifier", "classifier") and report["passed"]
    assert "base_headline" not in report  # an untrained classification head has no base row
    assert "| classifier | classifier |" in report["students"] and "| broken | generative |" in report["students"]
    assert children["classifier"].info.run_id in report["mlflow_run"]
    assert tracker.client.get_run(children["classifier"].info.run_id).data.metrics["chosen"] == 1.0
    version = tracker.client.get_model_version(registered_model_name(WORKLOAD), report["model_version"])
    assert version.tags["distillery.student_kind"] == "classifier" and version.run_id == children["classifier"].info.run_id
    deployed = _metadata(result, deployed_endpoint)
    assert deployed["promoted"] and deployed["student_kind"] == "classifier"

    # A cascade whose threshold lies amid the classifier's confidences on five tickets (asked of its server): through
    # the gateway, the tickets below it are escalated to the frontier, the others answered by the classifier.
    texts = ("I was charged twice", "My parcel never arrived", "I can't log in", "refund please", "hello there")
    server = openai.OpenAI(base_url=deployed["url"], api_key="local", max_retries=0)
    confidences = {}
    for text in texts:
        choice = server.chat.completions.create(model=deployed["served_model"], messages=demo_messages(text),
                                                logprobs=True).choices[0]
        confidences[text] = confidence(LABEL_PROBABILITY, [entry.logprob for entry in choice.logprobs.content])
    ordered = sorted(confidences.values())
    threshold = (ordered[1] + ordered[2]) / 2
    routes = RouteStore(LogStore().engine)
    routes.set(replace(routes.get(WORKLOAD), mode=SMALL, cascade=Cascade(threshold, LABEL_PROBABILITY, 0.5)), "test")
    with _gateway_to_frontier(None, None, route_refresh_s=0.2, audit_percent=0) as gateway:
        client = openai.OpenAI(base_url=gateway.url, api_key="demo", max_retries=0,
                               default_headers={"X-Distillery-Workload": WORKLOAD})
        for text in texts:
            assert client.chat.completions.create(model=STANDIN_MODEL, messages=demo_messages(text)).choices[
                0].message.content in QUEUES
    rows = LogStore().read(WORKLOAD).tail(len(texts))
    for text, served_by, row_confidence, params in zip(texts, rows["served_by"], rows["confidence"],
                                                       rows["request_params"]):
        assert row_confidence == pytest.approx(confidences[text], abs=1e-4)  # the gateway's, as the server's
        if confidences[text] >= threshold:
            assert served_by == "small"
        else:  # escalated: the frontier answered; the row keeps the classifier's confidence and answer
            assert served_by != "small" and params["distillery_escalated"]["small_answer"] in QUEUES
