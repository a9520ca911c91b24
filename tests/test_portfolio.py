"""The fleet view on a real SQLite log store through the real CLI, and the asset in Dagster."""

import datetime as dt
import json
import re

import dagster as dg
import pytest
from typer.testing import CliRunner

from distillery.cli import app
from distillery.evaluation.costs import DAYS_PER_MONTH
from distillery.routing import Route, RouteStore
from distillery.store import Exchange, LogStore

REQUESTS_PER_DAY = 100
LABELS = ["billing", "shipping", "account", "refund"]


def _workload(name: str, usd_per_month: float, answers=None, small_answers: int = 0) -> list[Exchange]:
    """A day of traffic (100 requests spread over 24 hours) whose logged cost projects to ``usd_per_month``."""
    start = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    per_request = usd_per_month / (REQUESTS_PER_DAY * DAYS_PER_MONTH)
    rows = []
    for i in range(REQUESTS_PER_DAY):
        answer = answers(i) if answers else LABELS[i % len(LABELS)]
        served_small = i < small_answers
        rows.append(Exchange(name, [{"role": "user", "content": f"ticket {i} for {name}"}], answer,
                             created_at=start + dt.timedelta(hours=24 * i / (REQUESTS_PER_DAY - 1)),
                             cost_usd=None if served_small else per_request,
                             served_by="small" if served_small else None))
    return rows


@pytest.fixture
def fleet(distillery_home):
    store = LogStore()
    store.upgrade()
    store.record(_workload("faq", 500) + _workload("invoices", 2500) + _workload("triage", 6000))
    return store


def _portfolio() -> list[dict]:
    result = CliRunner().invoke(app, ["portfolio", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_portfolio_ranks_by_projected_saving_and_recommends_only_the_big_frontier_workload(fleet):
    lines = _portfolio()
    assert [line["workload"] for line in lines] == ["triage", "invoices", "faq"]
    spend = {line["workload"]: line["frontier_usd_per_month"] for line in lines}
    assert spend == pytest.approx({"triage": 6000, "invoices": 2500, "faq": 500}, rel=0.02)
    assert {"workload", "requests_per_month", "frontier_usd_per_month", "task", "stage", "realized_saving_usd",
            "projected_saving_usd_per_month", "recommended", "reason"} <= set(lines[0])
    assert [line["workload"] for line in lines if line["recommended"]] == ["triage"]
    assert all(line["task"] == "classification" and line["stage"] == "frontier" for line in lines)
    assert "not over $3,000" in lines[1]["reason"] and "projected saving" in lines[0]["reason"]
    # No champion evaluated yet: the small model's price is the stated estimate.
    assert lines[0]["small_price_basis"].startswith("estimate")
    assert lines[0]["projected_saving_usd_per_month"] == pytest.approx(6000 - 0.05 / 1000 * lines[0][
        "requests_per_month"], rel=0.02)

    RouteStore(fleet.engine).set(Route("triage", "small", 0, "http://127.0.0.1:9/v1", "triage-v1"), "migrated")
    moved = {line["workload"]: line for line in _portfolio()}
    assert not moved["triage"]["recommended"] and moved["triage"]["stage"] == "small"
    assert "already moving" in moved["triage"]["reason"]
    assert not any(line["recommended"] for line in moved.values())
    RouteStore(fleet.engine).set(Route("triage", "canary", 10, "http://127.0.0.1:9/v1", "triage-v1", autopilot=True),
                                 "autopilot on")
    walking = CliRunner().invoke(app, ["portfolio"]).output
    assert re.search(r"triage .* canary 10% \(autopilot\)", walking)
    assert {line["workload"]: line["autopilot"] for line in _portfolio()} == {"triage": True, "invoices": False,
                                                                              "faq": False}


def test_realized_saving_counts_small_model_answers_and_open_free_text_is_not_recommended(distillery_home):
    store = LogStore()
    store.upgrade()
    store.record(_workload("triage", 6000, small_answers=40)
                 + _workload("chat", 9000, answers=lambda i: f"A long, different answer number {i} about topic {i}."))
    lines = {line["workload"]: line for line in _portfolio()}
    per_request = 6000 / (REQUESTS_PER_DAY * DAYS_PER_MONTH)
    assert lines["triage"]["realized_saving_usd"] == pytest.approx(40 * (per_request - 0.05 / 1000))
    assert lines["chat"]["task"] == "free_text" and not lines["chat"]["recommended"]
    assert "100% distinct answers" in lines["chat"]["reason"]


def test_a_cascade_is_priced_at_its_live_coverage(distillery_home):
    """Covered calls cost the small model; escalated ones cost it and the frontier."""
    from distillery.tasks import Cascade, DecodingPolicy

    store = LogStore()
    store.upgrade()
    rows = _workload("triage", 6000, small_answers=30)
    for i, row in enumerate(rows[:40]):  # 30 covered, 10 escalated (answered by the frontier)
        row.confidence = 0.95 if i < 30 else 0.3
    store.record(rows)
    policy = DecodingPolicy(labels=tuple(LABELS))
    RouteStore(store.engine).set(Route("triage", "small", 0, "http://127.0.0.1:9/v1", "triage-v1", policy,
                                       Cascade(0.9, "label_probability", 0.8)), "cascade")
    [line] = _portfolio()
    frontier, small = 6000 / (REQUESTS_PER_DAY * DAYS_PER_MONTH), 0.05 / 1000
    assert line["stage"] == "small (cascade at 0.9)"
    assert line["small_usd_per_request"] == pytest.approx(small + 0.25 * frontier, rel=0.02)  # 75% coverage
    assert "cascade blended at 75% coverage (live, 40 calls)" in line["small_price_basis"]
    assert line["realized_saving_usd"] == pytest.approx(30 * (frontier - small) - 10 * small, rel=0.02)


def test_the_asset_puts_the_table_and_an_inline_chart_in_its_metadata(fleet, distillery_home):
    from pipelines.definitions import defs

    with dg.instance_for_test() as instance:
        result = dg.materialize([defs().get_assets_def("workload_portfolio")], instance=instance,
                                resources=defs().resources, selection=["workload_portfolio"])
        assert result.success
        metadata = result.asset_materializations_for_node("workload_portfolio")[0].metadata
    assert metadata["recommended"].value == ["triage"]
    assert metadata["portfolio"].value.index("| triage |") < metadata["portfolio"].value.index("| faq |")
    assert metadata["spend_by_workload"].value.startswith("![spend by workload](data:image/png;base64,iVBOR")
    assert metadata["frontier_usd_per_month"].value == pytest.approx(9000, rel=0.02)
