import datetime as dt

import pandas as pd
import sqlalchemy as sa

from distillery.store import STATUS_ERROR, Exchange, LogStore, load_snapshot, save_snapshot
from distillery.store.migrations import current_revision


def _exchange(workload: str, answer: str | None = "billing", **kwargs) -> Exchange:
    return Exchange(
        workload=workload,
        request_messages=[{"role": "user", "content": f"ticket for {workload}"}],
        response_text=answer,
        model="frontier-standin",
        request_params={"temperature": 0, "max_tokens": 8},
        prompt_tokens=12,
        completion_tokens=1,
        latency_ms=3.5,
        **kwargs,
    )


def test_upgrade_creates_schema_at_head_and_is_idempotent(log_store_url):
    store = LogStore(log_store_url)
    store.upgrade()
    store.upgrade()
    assert current_revision(store.engine) == "0010"
    columns = {c["name"] for c in sa.inspect(store.engine).get_columns("exchanges")}
    assert {"id", "workload", "created_at", "request_messages", "request_params", "response_text", "model",
            "prompt_tokens", "completion_tokens", "latency_ms", "status", "error", "served_by"} <= columns
    assert {"routes", "route_events", "api_keys"} <= set(sa.inspect(store.engine).get_table_names())


def test_the_migrations_build_exactly_the_tables_the_models_describe(log_store_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from distillery.store.logstore import Base

    store = LogStore(log_store_url)
    store.upgrade()
    with store.engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert differences == []
    indexes = {index["name"] for index in sa.inspect(store.engine).get_indexes("exchanges")}
    assert indexes >= {"ix_exchanges_workload_id"} and not indexes & {"ix_exchanges_workload", "ix_exchanges_created_at"}


def test_record_and_read_round_trip(log_store_url):
    store = LogStore(log_store_url)
    store.upgrade()
    failed = _exchange("triage", answer=None, status=STATUS_ERROR, status_code=500, error="upstream 500")
    assert store.record([_exchange("triage"), failed, _exchange("extract", answer='{"a": 1}')]) == 3

    assert store.workloads() == {"triage": 2, "extract": 1}
    rows = store.read("triage")
    assert list(rows["status"]) == ["ok", "error"]
    assert rows["id"].is_monotonic_increasing
    first = rows.iloc[0]
    assert first["request_messages"] == [{"role": "user", "content": "ticket for triage"}]
    assert first["request_params"] == {"temperature": 0, "max_tokens": 8}
    assert first["response_text"] == "billing"
    assert rows.iloc[1]["error"] == "upstream 500"
    assert store.read("unknown").empty


def test_data_survives_a_second_upgrade(tmp_path):
    url = f"sqlite:///{tmp_path / 'logs.db'}"
    first = LogStore(url)
    first.upgrade()
    first.record([_exchange("triage")])
    first.dispose()
    reopened = LogStore(url)
    reopened.upgrade()
    assert reopened.workloads() == {"triage": 1}


def test_snapshot_keeps_json_columns_with_different_keys(tmp_path):
    store = LogStore(f"sqlite:///{tmp_path / 'logs.db'}")
    store.upgrade()
    store.record([_exchange("w"), Exchange(workload="w", request_messages=[{"role": "user", "content": "x"}],
                                           response_text="y", request_params={"stop": ["\n"]},
                                           created_at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))])
    rows = store.read("w")
    save_snapshot(rows, tmp_path / "rows.parquet")
    again = load_snapshot(tmp_path / "rows.parquet")
    assert list(again["request_params"]) == [{"temperature": 0, "max_tokens": 8}, {"stop": ["\n"]}]
    pd.testing.assert_series_equal(again["id"], rows["id"])
