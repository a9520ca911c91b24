"""Live figures and drift on rows read back from a real SQLite log store; the retrain signal they raise."""

import json

import dagster as dg
import pytest

from distillery.monitoring import MonitoringPolicy, label_shift, length_psi, live_report, psi
from distillery.store import Exchange, LogStore
from assets import frontier_traffic, live_monitoring
from pipelines.automation import build_log_store_watch
from resources import LogStoreResource

TRAIN = [[{"role": "user", "content": f"my card payment {i} failed at the shop"}] for i in range(40)]


def test_psi_is_zero_for_the_same_distribution_and_grows_with_the_shift():
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0
    assert 0 < psi([0.5, 0.5], [0.6, 0.4]) < psi([0.5, 0.5], [0.9, 0.1])
    texts = [m[0]["content"] for m in TRAIN]
    assert length_psi(texts, texts) == pytest.approx(0)
    assert length_psi(texts, [t * 5 for t in texts]) > 1
    assert label_shift(["a", "a", "b", "b"], ["a", "b"]) == 0 and label_shift(["a"], ["b"]) == 1


def _rows(tmp_path, exchanges):
    store = LogStore(f"sqlite:///{tmp_path / 'logs.db'}")
    store.upgrade()
    store.record(exchanges)
    return store.read("triage")


def test_live_report_counts_shadow_agreement_invalid_answers_money_and_drift(tmp_path):
    live = [Exchange("triage", [{"role": "user", "content": f"where is parcel {i}? it is very late"}], "shipping",
                     cost_usd=0.002) for i in range(30)]
    shadow = [Exchange("triage", m.request_messages, "shipping" if i < 20 else "nonsense", served_by="shadow",
                       request_params={"agrees_with_frontier": i < 20, "valid_answer": i < 25})
              for i, m in enumerate(live)]
    small = [Exchange("triage", live[0].request_messages, "shipping", served_by="small") for _ in range(10)]
    fallback = [Exchange("triage", live[0].request_messages, "shipping",
                         request_params={"distillery_fallback": "invalid answer: nonsense"}, cost_usd=0.002)]
    rows = _rows(tmp_path, live + shadow + small + fallback)
    report = live_report(rows, "triage", train_prompts=TRAIN, train_answers=["billing"] * 40, since_log_id=0,
                         task="classification", small_usd_per_request=0.0005)
    assert report.live_rows == 31 and report.small_served == 10 and report.fallbacks == 1
    assert report.shadow_compared == 30 and report.shadow_agreement == pytest.approx(20 / 30)
    assert report.invalid_rate == pytest.approx((5 + 1) / (10 + 1 + 30))  # of every answer the small model gave
    assert report.money_saved_usd == pytest.approx(10 * (0.002 - 0.0005))
    assert report.label_shift == 1.0 and report.cluster_psi > 0.25 and report.length_psi > 0.25  # all new
    failures = MonitoringPolicy().failures(report)
    assert failures["shadow_agreement"] and failures["prompt_drift"] and failures["label_shift"]
    assert failures["invalid_answers"].startswith("invalid-answer rate 0.146")


def test_a_cascades_coverage_and_audited_agreement_are_measured_against_evaluation(tmp_path):
    messages = [{"role": "user", "content": "where is my parcel"}]
    covered = [Exchange("triage", messages, "shipping", served_by="small", confidence=0.97) for _ in range(12)]
    escalated = [Exchange("triage", messages, "billing", cost_usd=0.002, confidence=0.4, request_params={
        "distillery_escalated": {"reason": "confidence 0.4 < threshold 0.9", "small_answer": "shipping"}})
        for _ in range(18)]
    audits = [Exchange("triage", messages, "shipping", served_by="audit", cost_usd=0.002,
                       request_params={"audit_of": "x", "agrees_with_frontier": i < 6}) for i in range(10)]
    rows = _rows(tmp_path, covered + escalated + audits)
    report = live_report(rows, "triage", train_prompts=TRAIN, train_answers=["billing"] * 40, since_log_id=0,
                         task="classification", small_usd_per_request=0.0005, evaluated_coverage=0.7,
                         min_cascade_calls=10)
    assert report.escalated == 18 and report.cascade_coverage == pytest.approx(12 / 30)
    assert report.audited == 10 and report.audited_agreement == pytest.approx(0.6)
    # escalated calls were asked of the small model too: they cost it without saving the frontier's price
    assert report.money_saved_usd == pytest.approx(12 * 0.002 - 30 * 0.0005)
    failures = MonitoringPolicy(min_cascade_calls=10).failures(report)
    assert failures["cascade_coverage"] == ("cascade coverage 40.0% over 30 calls is more than 20 points below the "
                                            "evaluated 70.0%")
    assert failures["audited_agreement"].startswith("audited agreement 60.0% < 80%")
    assert MonitoringPolicy(max_coverage_drop=0.35).failures(report)["cascade_coverage"] is None
    few = live_report(rows, "triage", train_prompts=TRAIN, train_answers=["billing"] * 40, since_log_id=0,
                      task="classification", small_usd_per_request=0.0005, evaluated_coverage=0.7)
    assert few.audited_agreement is None  # 10 audits are under the default 20


def test_too_little_live_traffic_says_so_instead_of_a_drift_figure(tmp_path):
    rows = _rows(tmp_path, [Exchange("triage", TRAIN[0], "billing", cost_usd=0.001)])
    report = live_report(rows, "triage", train_prompts=TRAIN, train_answers=["billing"] * 40, since_log_id=0,
                         task="classification", small_usd_per_request=0.0)
    assert report.length_psi is None and "drift needs at least 20" in report.notes[0]
    assert not any(MonitoringPolicy().failures(report).values())


def test_live_monitoring_retrain_reasons_signal_frontier_traffic_once_per_result(tmp_path):
    url = f"sqlite:///{tmp_path / 'logs.db'}"
    _rows(tmp_path, [Exchange("triage", TRAIN[0], "billing"), Exchange("quiet", TRAIN[1], "billing")])
    resources = {"log_store": LogStoreResource(url=url)}
    watch = build_log_store_watch(new_rows_to_retrain=1000)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("workload", ["triage", "quiet"])

        def monitored(workload, reasons):
            instance.report_runless_asset_event(dg.AssetMaterialization(
                live_monitoring.key, partition=workload, metadata={"retrain_reasons": dg.MetadataValue.json(reasons)}))

        def tick(cursor):
            return watch(dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor))

        monitored("triage", ["label distribution shift 0.400 > 0.15"])
        monitored("quiet", [])
        result = tick(None)
        [signal] = result.asset_events
        assert signal.asset_key == frontier_traffic.key and signal.partition == "triage"
        assert "label distribution shift" in signal.metadata["reasons"].value
        assert isinstance(tick(result.cursor), dg.SkipReason)  # the same result never signals twice
        monitored("triage", ["shadow agreement 0.52 < 0.8"])
        [again] = tick(result.cursor).asset_events
        assert "shadow agreement" in again.metadata["reasons"].value


def test_extraction_answers_with_planted_values_have_exactly_that_share_unsupported(tmp_path):
    cities = ["Paris", "Rome", "Lisbon", "Oslo", "Vienna", "Prague", "Dublin", "Madrid", "Berlin", "Athens"]
    frontier, shadow = [], []
    for i, city in enumerate(cities * 3):
        request = [{"role": "system", "content": "Extract the slots as JSON."},
                   {"role": "user", "content": f"Book {i + 2} seats to {city} on Friday, please"}]
        truth = {"slots": {"city": city, "day": "friday", "seats": i + 2}}
        frontier.append(Exchange("triage", request, json.dumps(truth), uid=f"f{i}"))
        answer = {"slots": {**truth["slots"]}}
        if i % 3 == 0:  # planted: a value that is not in the prompt, and a field the frontier never gives
            answer["slots"]["airline"] = "Lufthansa"
        shadow.append(Exchange("triage", request, json.dumps(answer), served_by="shadow",
                               request_params={"shadow_of": f"f{i}"}))
    rows = _rows(tmp_path, frontier + shadow)
    report = live_report(rows, "triage", train_prompts=TRAIN, train_answers=["{}"] * 40, since_log_id=0,
                         task="extraction", small_usd_per_request=0.0)
    planted, values = 10, 30 * 3 + 10
    assert report.hallucination.unsupported_value_share == pytest.approx(planted / values)
    assert report.hallucination.invented_field_share == pytest.approx(planted / values)
    assert MonitoringPolicy(max_unsupported_value_share=0.05).failures(report)["hallucination"].startswith(
        "answer values not in the prompt 10.0%")
    assert MonitoringPolicy().failures(report)["hallucination"] is None  # 10% is not above the default 10%


def test_free_text_without_a_judge_scores_unrelated_answers_below_paraphrases():
    from distillery.monitoring import free_text_figures

    prompts = ["My parcel was due on Monday and still has not arrived. Where is it?",
               "I was charged twice for the same order last week, can I get one refunded?"]
    requests = [[{"role": "user", "content": p}] for p in prompts]
    frontier = ["Your parcel is delayed at the depot and should arrive within two days.",
                "We have refunded the duplicate charge; it reaches your account in three to five days."]
    paraphrases = ["The parcel is held up at our depot; expect it in the next two days.",
                   "The second charge has been refunded and will be back in your account in 3-5 days."]
    unrelated = ["Photosynthesis converts light into chemical energy in plants.",
                 "The Eiffel Tower was completed in 1889 for the World's Fair."]
    close = free_text_figures(requests, prompts, paraphrases, frontier)
    far = free_text_figures(requests, prompts, unrelated, frontier)
    assert close.agreement_basis == "embedding similarity"
    assert far.faithfulness < close.faithfulness and far.frontier_agreement < close.frontier_agreement
    assert MonitoringPolicy().hallucination_failure(far) and not MonitoringPolicy().hallucination_failure(close)
    judged = free_text_figures(requests, prompts, unrelated, frontier, judge=lambda r, f, s: 0.0, judge_name="j")
    assert judged.frontier_agreement == 0.0 and judged.agreement_basis == "judge j"


def test_classification_labels_the_frontier_never_gave_similar_prompts_are_counted():
    import numpy as np
    from distillery.monitoring import classification_figures

    rng = np.random.default_rng(0)
    centres = np.eye(8)[:2]
    train = np.vstack([centres[i % 2] + 0.01 * rng.standard_normal(8) for i in range(40)])
    train /= np.linalg.norm(train, axis=1, keepdims=True)
    labels = ["billing" if i % 2 == 0 else "shipping" for i in range(40)]
    live = np.vstack([centres[0]] * 10)
    figures = classification_figures(train, labels, live, ["billing"] * 7 + ["shipping"] * 3)
    assert figures.unsupported_label_share == pytest.approx(0.3)


def test_the_gateway_rollback_watches_unsupported_values():
    from distillery.routing import RollbackPolicy, RolloutMonitor

    monitor = RolloutMonitor(RollbackPolicy(min_samples=20, max_unsupported_value_share=0.2))
    for i in range(20):
        monitor.observe(True, 10.0, unsupported=0.1, now=float(i))
    assert monitor.breach(now=20.0) is None
    for i in range(20):
        monitor.observe(True, 10.0, unsupported=0.5, now=20.0 + i)
    assert monitor.breach(now=40.0).startswith("answer values not in the prompt 30.0%")


def _deployed_extraction_workload(artifacts, workload: str) -> str:
    """The artifacts live monitoring reads, as the lifecycle leaves them: a curated extraction dataset, an adapter
    trained on it, and the eval report that passed it; returns the report's version."""
    from datasets import Dataset, DatasetDict

    from distillery.lifecycle import ADAPTER, CURATED, REPORT

    train = [{"messages": [{"role": "user", "content": f"book a table for {n} in Paris"},
                           {"role": "assistant", "content": json.dumps({"city": "Paris", "people": str(n)})}]}
             for n in range(2, 8)]
    with artifacts.publish(workload, CURATED, {"last_log_id": 0, "task": "extraction"}) as folder:
        DatasetDict({"train": Dataset.from_list(train)}).save_to_disk(str(folder / "dataset"))
    with artifacts.publish(workload, ADAPTER, {"dataset_version": artifacts.latest(workload, CURATED).version}):
        pass
    with artifacts.publish(workload, REPORT, {"adapter_version": artifacts.latest(workload, ADAPTER).version}) as folder:
        (folder / "report.json").write_text(json.dumps({"operations": {}}))
    return artifacts.latest(workload, REPORT).version


def test_live_monitoring_steps_a_route_back_one_stage_of_the_rollout(tmp_path, distillery_home):
    """Through the asset: a hallucinating small model (answer values its prompts do not hold) steps an autopilot route
    and a hand-set route back by the same rule as the gateway, along the gateway file's [autopilot] stages."""
    from distillery.routing import CANARY, SMALL, Approval, Route, RouteStore
    from distillery.store import ArtifactStore
    from distillery.tasks import DecodingPolicy
    from resources import ArtifactsResource, GatewayResource, JudgeResource

    store = LogStore()
    store.upgrade()
    artifacts = ArtifactStore()
    routes = RouteStore(store.engine)
    config = tmp_path / "gateway.toml"
    config.write_text('[upstreams.openai]\nbase_url = "http://127.0.0.1:9/v1"\n\n'
                      '[autopilot]\nstages = ["shadow", "canary 5", "canary 25", "small"]\nmin_dwell_s = [0, 0, 0]\n')
    policy = DecodingPolicy.for_task("extraction")
    hand_set = Route("booking", SMALL, 0.0, "http://127.0.0.1:9/v1", "booking-v1", policy)
    autopilot = Route("orders", CANARY, 25.0, "http://127.0.0.1:9/v1", "orders-v1", policy, autopilot=True,
                      approval=Approval("full", 0.95, model_version="1"))
    resources = {"log_store": LogStoreResource(), "artifacts": ArtifactsResource(), "judge": JudgeResource(),
                 "gateway": GatewayResource(config_file=str(config))}
    with dg.instance_for_test() as instance:
        for route in (hand_set, autopilot):
            workload = route.workload
            routes.set(route, "deployed")
            version = _deployed_extraction_workload(artifacts, workload)
            instance.add_dynamic_partitions("workload", [workload])
            instance.report_runless_asset_event(dg.AssetMaterialization("eval_report", partition=workload,
                                                                        metadata={"version": version}))
            store.record([Exchange(workload, [{"role": "user", "content": "a table for two in Rome"}],
                                   json.dumps({"city": "Berlin"}), served_by="small") for _ in range(5)])
        walked = {route.workload: [route.label] for route in (hand_set, autopilot)}
        for _ in range(2):
            for workload in walked:
                result = dg.materialize([live_monitoring], partition_key=workload, instance=instance,
                                        resources=resources)
                [materialization] = result.asset_materializations_for_node("live_monitoring")
                walked[workload].append(materialization.metadata["route"].value)
    # The gateway file's stages, not the defaults: small -> canary 25% -> canary 5% -> shadow (where no small-model
    # answer reaches a caller, so monitoring steps back no further); the autopilot stays on.
    assert walked == {"booking": ["small", "canary 25%", "canary 5%"], "orders": ["canary 25%", "canary 5%", "shadow"]}
    assert routes.get("orders").autopilot and not routes.get("booking").autopilot
    [latest, *_] = routes.events("orders")
    assert latest.kind == "rollback" and latest.reason.startswith("live monitoring: answer values not in the prompt")
