"""Live figures and drift on rows read back from a real SQLite log store; the retrain signal they raise."""

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
                         classification=True, small_usd_per_request=0.0005)
    assert report.live_rows == 31 and report.small_served == 10 and report.fallbacks == 1
    assert report.shadow_compared == 30 and report.shadow_agreement == pytest.approx(20 / 30)
    assert report.invalid_rate == pytest.approx((5 + 1) / (10 + 1 + 30))  # of every answer the small model gave
    assert report.money_saved_usd == pytest.approx(10 * (0.002 - 0.0005))
    assert report.label_shift == 1.0 and report.cluster_psi > 0.25 and report.length_psi > 0.25  # all new
    failures = MonitoringPolicy().failures(report)
    assert failures["shadow_agreement"] and failures["prompt_drift"] and failures["label_shift"]
    assert failures["invalid_answers"].startswith("invalid-answer rate 0.146")


def test_too_little_live_traffic_says_so_instead_of_a_drift_figure(tmp_path):
    rows = _rows(tmp_path, [Exchange("triage", TRAIN[0], "billing", cost_usd=0.001)])
    report = live_report(rows, "triage", train_prompts=TRAIN, train_answers=["billing"] * 40, since_log_id=0,
                         classification=True, small_usd_per_request=0.0)
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
