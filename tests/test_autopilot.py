"""The rollout autopilot: its sequential test on a real log store, the gateway walking a route by itself between two
real stub servers on loopback, the CLI that turns it on, pins and shows it, and the Dagster sensor that records it."""

import asyncio
import datetime as dt
import time

import dagster as dg
import openai
import pytest
import sqlalchemy as sa
from support.stub_provider import StubUpstream
from typer.testing import CliRunner

from distillery.cli import app
from distillery.errors import DistilleryError
from distillery.gateway import BackgroundGateway, GatewayConfig, load_config
from distillery.routing import (ADVANCE, CANARY, FRONTIER, SHADOW, SMALL, STEP_BACK, Approval, AutopilotPolicy,
                                Evidence, RollbackPolicy, Route, RouteStore, RouteTable, step_back)
from distillery.store import LogStore
from distillery.tasks import LABEL_PROBABILITY, Cascade, DecodingPolicy
from distillery.training import Tracker
from pipelines.automation import AUTOPILOT_TAG, LIVE_STAGE_TAG, route_changes
from resources import LogStoreResource, MlflowResource

LABELS = DecodingPolicy(labels=("ok", "other"))
MESSAGES = [{"role": "user", "content": "where is my parcel"}]
NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.timezone.utc)
LONG_AGO = NOW - dt.timedelta(days=30)
CASCADE = Cascade(0.9, LABEL_PROBABILITY, 0.7)


def _route(mode: str = SHADOW, percent: float = 0.0, *, url: str = "http://127.0.0.1:9/v1", autopilot: bool = True,
           approval: Approval | None = Approval("full", 0.95, model_version="1"), cascade: Cascade | None = None,
           policy: DecodingPolicy = LABELS) -> Route:
    return Route("triage", mode, percent, url, "triage-v1", policy, cascade, autopilot=autopilot, approval=approval)


@pytest.fixture
def store(distillery_home):
    logs = LogStore()
    logs.upgrade()
    return logs


def test_settings_out_of_range_are_refused_when_the_gateway_starts(tmp_path):
    for bad, message in [({"delta": 0.0}, "delta"), ({"delta": 0.5}, "delta"), ({"margin": 0.0}, "margin"),
                         ({"min_dwell_s": (-1, 0, 0)}, "min_dwell_s -1"),
                         ({"min_dwell_s": (0, 0, 40 * 86_400)}, "30 days"), ({"min_dwell_s": (0, 0)}, "one per stage"),
                         ({"stages": ("canary 10", "small"), "min_dwell_s": (0,)}, "start at shadow"),
                         ({"stages": ("shadow", "canary 50", "canary 10", "small")}, "further than"),
                         ({"stages": ("shadow", "canary 150", "small"), "min_dwell_s": (0, 0)}, "0 < N < 100")]:
        with pytest.raises(ValueError, match=message):
            AutopilotPolicy(**bad)
    config = tmp_path / "gateway.toml"
    config.write_text('[upstreams.stub]\nbase_url = "http://127.0.0.1:9/v1"\n\n[autopilot]\ndelta = 0.9\n')
    with pytest.raises(DistilleryError, match=r"\[autopilot\]: autopilot delta 0.9: between 0.001 and 0.2"):
        load_config(config)
    config.write_text('[upstreams.stub]\nbase_url = "http://127.0.0.1:9/v1"\n\n[autopilot]\ndwell = 5\n')
    with pytest.raises(DistilleryError, match="unknown \\[autopilot\\] setting"):
        load_config(config)
    config.write_text('[upstreams.stub]\nbase_url = "http://127.0.0.1:9/v1"\n\n[autopilot]\n'
                      'stages = ["shadow", "canary 25", "small"]\nmin_dwell_s = [60, 60]\n')
    assert [stage.label for stage in load_config(config).autopilot.walk] == ["shadow", "canary 25%", "small"]


def test_a_sound_stage_advances_and_a_worse_one_steps_back_each_decision_stored_with_its_evidence(store):
    policy, routes = AutopilotPolicy(min_dwell_s=(0, 0, 0)), RouteStore(store.engine)
    route = routes.set(_route(SHADOW), "deployed")
    # 1,000 compared calls at the evaluated 95%: the log-likelihood ratio of sound against worse passes log(1/0.05).
    llr = policy.llr_of(route.approval, 1000, 950)
    assert llr > policy.advance_bound
    assert routes.add_evidence("triage", route.epoch, 1000, 950, llr, cap=policy.step_back_bound)
    state = routes.state("triage")
    assert state.evidence.calls == 1000 and state.evidence.llr == pytest.approx(min(llr, policy.step_back_bound))
    decision = policy.judge(state.route, state.evidence, state.since, state.since + dt.timedelta(seconds=1))
    assert decision.kind == ADVANCE and decision.route.label == "canary 10%"
    assert "accepts sound" in decision.reason
    stored = routes.set(decision.route, decision.reason, decision.kind, evidence=decision.evidence,
                        expected_epoch=state.route.epoch)
    assert stored.epoch == route.epoch + 1 and routes.state("triage").evidence == Evidence()  # a new test
    # The same decision a second time (another gateway judging the stage that is over) changes nothing.
    assert routes.set(decision.route, decision.reason, decision.kind, expected_epoch=state.route.epoch) is None
    # Counts of the stage that is over land nowhere.
    assert not routes.add_evidence("triage", route.epoch, 10, 0, -5.0, cap=policy.step_back_bound)
    # 300 compared calls at 85%: worse by far more than the margin; the stage steps back.
    assert routes.add_evidence("triage", stored.epoch, 300, 255, policy.llr_of(stored.approval, 300, 255),
                               cap=policy.step_back_bound)
    state = routes.state("triage")
    back = policy.judge(state.route, state.evidence, state.since, state.since)
    assert back.kind == STEP_BACK and back.route.label == "shadow" and "accepts worse" in back.reason
    routes.set(back.route, back.reason, back.kind, evidence=back.evidence, expected_epoch=state.route.epoch)
    [stepped, advanced, _] = routes.events("triage")
    assert (advanced.kind, advanced.from_mode, advanced.to_mode) == (ADVANCE, "shadow", "canary 10%")
    assert advanced.evidence == {"calls": 1000, "agreed": 950, "agreement": 0.95, "sound_agreement": 0.95,
                                 "worse_agreement": 0.93, "llr": round(llr, 4),
                                 "bound": round(policy.advance_bound, 4), "delta": 0.05, "model_version": "1"}
    assert (stepped.kind, stepped.to_mode, stepped.evidence["calls"], stepped.evidence["agreement"]) == \
        (STEP_BACK, "shadow", 300, 0.85)
    assert stepped.evidence["llr"] <= stepped.evidence["bound"] == -round(policy.step_back_bound, 4)


def test_it_waits_for_the_dwell_and_for_the_rollback_window_and_holds_evidence_at_the_bound():
    policy = AutopilotPolicy(min_dwell_s=(3600, 60, 60))
    route, held = _route(SHADOW), Evidence(900, 880, policy.step_back_bound)
    assert policy.judge(route, held, NOW - dt.timedelta(minutes=59), NOW) is None  # an hour in shadow first
    assert "in 1.0 min at the earliest" in policy.outlook(route, held, NOW - dt.timedelta(minutes=59), NOW)
    assert policy.judge(route, held, NOW - dt.timedelta(hours=1), NOW, breach="p95 latency 2500 ms > 2000 ms") is None
    assert policy.judge(route, held, NOW - dt.timedelta(hours=1), NOW).kind == ADVANCE
    # Evidence for sound never grows past the step-back bound's size: a late drop is seen as soon as an early one.
    grown = policy.add(Evidence(), route.approval, 100_000, 95_000)
    assert grown.llr == policy.step_back_bound and grown.calls == 100_000
    dropped = policy.add(grown, route.approval, 200, 150)
    assert policy.judge(route, dropped, LONG_AGO, NOW).kind == STEP_BACK
    # The first stage steps back to the frontier, where nothing is compared: the autopilot stops there.
    frontier = policy.judge(route, Evidence(200, 150, -policy.step_back_bound), LONG_AGO, NOW).route
    assert (frontier.mode, frontier.autopilot) == (FRONTIER, False)


def test_the_gates_mode_is_the_ceiling(store):
    policy = AutopilotPolicy(min_dwell_s=(0, 0, 0))
    approval = Approval("cascade", 0.97, CASCADE, "3")
    sound = Evidence(2000, 1960, policy.step_back_bound)
    # The last step goes to small in the gate's mode: its cascade, not the small model answering every call.
    top = policy.judge(_route(CANARY, 50, approval=approval, cascade=CASCADE), sound, LONG_AGO, NOW).route
    assert top.label == "small (cascade at 0.9)" and top.cascade == CASCADE
    assert policy.judge(top, sound, LONG_AGO, NOW) is None  # the last stage: it keeps watching
    assert "last stage (small (cascade at 0.9), the gate's cascade mode)" in policy.outlook(top, sound, LONG_AGO, NOW)
    # A person took the route past the gate's mode; turning the autopilot on gives the gate's cascade back.
    beyond = _route(SMALL, autopilot=False, approval=approval)
    assert policy.switched_on(beyond, "triage").cascade == CASCADE
    # A route the gate approved in full may end in small without a cascade.
    assert policy.next_route(_route(CANARY, 50)).label == "small"


def test_turning_it_on_is_refused_with_the_reason_and_a_pinned_route_stays_pinned(store):
    runner, routes = CliRunner(), RouteStore(store.engine)
    refused = runner.invoke(app, ["route", "auto", "triage", "on"])
    assert refused.exit_code == 2 and "no deployed adapter: materialize deployed_endpoint first" in refused.output
    routes.set(_route(SHADOW, autopilot=False, policy=DecodingPolicy()), "deployed")
    refused = runner.invoke(app, ["route", "auto", "triage", "on"])
    assert refused.exit_code == 2 and "answers free text: the gateway has no judge" in refused.output
    routes.set(_route(SHADOW, autopilot=False, approval=None), "deployed before the autopilot")
    refused = runner.invoke(app, ["route", "auto", "triage", "on"])
    assert refused.exit_code == 2 and "recorded no gate approval" in refused.output
    assert not routes.get("triage").autopilot  # nothing changed
    routes.set(_route(FRONTIER, autopilot=False), "stepped back to the frontier")
    on = runner.invoke(app, ["route", "auto", "triage", "on"])
    assert on.exit_code == 0 and "shadow, autopilot on" in on.output  # from the frontier: the first stage
    assert routes.get("triage").autopilot and routes.events("triage")[0].kind == "autopilot"
    pinned = runner.invoke(app, ["route", "set", "triage", "canary", "--percent", "30"])
    assert pinned.exit_code == 0 and "pinned: autopilot off" in pinned.output
    route = routes.get("triage")
    assert (route.label, route.autopilot, route.approval) == ("canary 30%", False, _route().approval)
    # Evidence that would advance it does not: the autopilot is off until a person turns it on again.
    policy = AutopilotPolicy(min_dwell_s=(0, 0, 0))
    assert policy.judge(route, Evidence(5000, 4900, policy.step_back_bound), LONG_AGO, NOW) is None
    assert "autopilot off" in runner.invoke(app, ["route", "show", "triage"]).output
    # Turned on again, it goes on from where the person left it: canary 30% lies between canary 10% and 50%.
    assert runner.invoke(app, ["route", "auto", "triage", "on"]).exit_code == 0
    assert policy.next_route(routes.get("triage")).label == "canary 50%"
    assert step_back(routes.get("triage"), policy).label == "canary 10%"


def test_evidence_waits_out_a_database_outage_and_a_stage_that_is_over_takes_none(postgres_url, postgres_admin):
    store = LogStore(postgres_url)
    store.upgrade()
    routes = RouteStore(store.engine)
    routes.set(_route(SHADOW), "deployed")
    table = RouteTable(routes, 0.0, AutopilotPolicy())

    def refresh() -> None:  # one refresh, as the gateway's event loop starts it, waited for
        async def run():
            table.get("triage")
            while table._refreshing:
                await asyncio.sleep(0.01)
        asyncio.run(run())

    def allow_connections(allowed: bool) -> None:
        with postgres_admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{store.engine.url.database}" ALLOW_CONNECTIONS {allowed}'))
            if not allowed:
                conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                     f"WHERE datname = '{store.engine.url.database}'"))

    route = table.routes["triage"]
    for i in range(20):
        table.compared(route, agreed=i != 0)
    allow_connections(False)
    try:
        refresh()  # the database is away: the counts stay with the gateway, the last known routes too
        assert table.routes["triage"] == route
    finally:
        allow_connections(True)
    for _ in range(10):
        table.compared(route, agreed=True)
    refresh()
    assert routes.state("triage").evidence.calls == 30 and routes.state("triage").evidence.agreed == 29
    # A person moves the route: counts gathered at the stage before land nowhere.
    routes.set(_route(CANARY, 10, autopilot=False), "by hand")
    table.compared(route, agreed=False)
    refresh()
    assert routes.state("triage").evidence == Evidence()


def _gateway(tmp_path, frontier_url: str, autopilot: AutopilotPolicy, **settings) -> BackgroundGateway:
    config = GatewayConfig.single(frontier_url, port=0, require_api_key=False, journal_path=tmp_path / "journal.jsonl",
                                  route_refresh_s=0.05, autopilot=autopilot, **settings)
    return BackgroundGateway(config)


def test_the_gateway_walks_the_route_to_small_then_steps_back_when_agreement_drops(store, tmp_path):
    """Shadow copies, then canary callers' copies, then audits are the evidence; every decision is a route event with
    its evidence and shows in `route show`; no caller ever gets an error."""
    frontier, small = StubUpstream().start(), StubUpstream().start()  # both answer "ok": full agreement, planted
    routes = RouteStore(store.engine)
    routes.set(_route(SHADOW, url=small.url), "deployed")
    # A 10-point margin keeps the test short: each stage needs log(20)/log(0.95/0.85) = 27 agreeing calls.
    policy = AutopilotPolicy(min_dwell_s=(0, 0, 0), margin=0.1)
    statuses, walked = [], []
    try:
        with _gateway(tmp_path, frontier.url, policy, audit_percent=100) as gateway:
            client = openai.OpenAI(base_url=gateway.url, api_key="unused", max_retries=0,
                                   default_headers={"X-Distillery-Workload": "triage"})

            def call(i: int) -> None:
                response = client.chat.completions.with_raw_response.create(model="gpt-x", messages=MESSAGES,
                                                                            user=f"caller-{i}")
                statuses.append(response.status_code)
                if not walked or walked[-1] != routes.get("triage").label:
                    walked.append(routes.get("triage").label)

            deadline = time.monotonic() + 60
            i = 0
            while routes.get("triage").mode != SMALL:
                assert time.monotonic() < deadline, f"the autopilot stopped at {routes.get('triage').label}"
                call(i := i + 1)
            small.agreement = 0.5  # the small model gets worse mid-run
            while routes.get("triage").mode == SMALL:
                assert time.monotonic() < deadline, "the drop was not stepped back"
                call(i := i + 1)
    finally:
        frontier.stop()
        small.stop()
    assert walked[:4] == ["shadow", "canary 10%", "canary 50%", "small"]
    assert set(statuses) == {200}  # 0 failed client calls throughout
    events = list(reversed(routes.events("triage")))[1:]  # oldest first, after the deployment
    assert [(e.kind, e.from_mode, e.to_mode) for e in events[:4]] == [
        (ADVANCE, "shadow", "canary 10%"), (ADVANCE, "canary 10%", "canary 50%"), (ADVANCE, "canary 50%", "small"),
        (STEP_BACK, "small", "canary 50%")]
    assert all(e.evidence["calls"] > 0 and e.evidence["delta"] == 0.05 for e in events[:4])
    assert events[3].evidence["agreement"] < 0.85 and "accepts worse" in events[3].reason
    shown = CliRunner().invoke(app, ["route", "show", "triage"]).output
    assert "autopilot on: canary 50%" in shown and "advances to small when it reaches +3.00" in shown
    assert "canary 50% -> small (autopilot:" in shown and "evidence: calls" in shown


def test_route_changes_are_observations_of_deployed_endpoint_and_tag_the_model_version(store, tmp_path):
    routes = RouteStore(store.engine)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "mlartifacts"))
    with tracker.run("triage", "train", {}) as run_id:
        version = tracker.register_adapter("triage", run_id, {})
    routes.set(_route(SHADOW, approval=Approval("full", 0.95, model_version=version)), "deployed")
    policy = AutopilotPolicy(min_dwell_s=(0, 0, 0))
    state = routes.state("triage")
    decision = policy.judge(state.route, Evidence(1000, 960, policy.advance_bound), LONG_AGO, NOW)
    routes.set(decision.route, decision.reason, decision.kind, evidence=decision.evidence)
    resources = {"log_store": LogStoreResource(url=store.url),
                 "mlflow": MlflowResource(tracking_uri=tracker.tracking_uri, artifact_root=tracker.artifact_root)}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("workload", ["triage"])
        result = route_changes(dg.build_sensor_context(instance=instance, resources=resources))
        deployed, advanced = result.asset_events
        assert (deployed.partition, deployed.metadata["to"].value) == ("triage", "shadow")
        assert advanced.metadata["change"].value == ADVANCE and advanced.metadata["evidence"].value["calls"] == 1000
        assert isinstance(route_changes(dg.build_sensor_context(instance=instance, resources=resources,
                                                                cursor=result.cursor)), dg.SkipReason)
    tags = tracker.client.get_model_version("distillery-triage", version).tags
    assert tags[LIVE_STAGE_TAG] == "canary 10%" and tags[AUTOPILOT_TAG] == "on"


def test_a_rollback_threshold_steps_an_autopilot_route_back_one_of_its_stages(store, tmp_path):
    """The small model's server dies in `small`: every caller gets the frontier's answer, and the error rate steps the
    route back to the stage before (canary 50%, not the fixed ladder's canary 10%); the autopilot stays on."""
    frontier, small = StubUpstream().start(), StubUpstream().start()
    routes = RouteStore(store.engine)
    routes.set(_route(SMALL, url=small.url), "the autopilot walked it here")
    small.stop()
    try:
        with _gateway(tmp_path, frontier.url, AutopilotPolicy(), small_timeout_s=2,
                      rollback=RollbackPolicy(min_samples=5, max_error_rate=0.2)) as gateway:
            client = openai.OpenAI(base_url=gateway.url, api_key="unused", max_retries=0,
                                   default_headers={"X-Distillery-Workload": "triage"})
            answers = [client.chat.completions.create(model="gpt-x", messages=MESSAGES, user=f"u{i}")
                       .choices[0].message.content for i in range(8)]
            deadline = time.monotonic() + 10
            while routes.get("triage").mode == SMALL:
                assert time.monotonic() < deadline, "the rollback was not stored"
                time.sleep(0.05)
    finally:
        frontier.stop()
    assert answers == ["ok"] * 8
    route, event = routes.get("triage"), routes.events("triage")[0]
    assert (route.label, route.autopilot) == ("canary 50%", True)
    assert (event.kind, event.from_mode, event.to_mode) == ("rollback", "small", "canary 50%")
    assert event.reason.startswith("automatic: error rate")
