"""Routes, the rollout monitor, and the gateway moving traffic between two real stub servers on loopback."""

import json
import re
import time
import urllib.request

import openai
import pytest
from support.stub_provider import StubUpstream

from distillery.gateway import BackgroundGateway, GatewayConfig, Upstream
from distillery.pricing import Price
from distillery.routing import (CANARY, FRONTIER, SHADOW, SMALL, AutopilotPolicy, RollbackPolicy, RolloutMonitor,
                                Route, RouteStore, canary_bucket, step_back, takes_small_model)
from distillery.store import LogStore
from distillery.tasks import DecodingPolicy

MESSAGES = [{"role": "user", "content": "where is my parcel"}]


def _route(mode: str, percent: float = 0.0, url: str = "http://127.0.0.1:9/v1") -> Route:
    return Route("triage", mode, percent, url, "triage")


def test_the_canary_share_follows_the_percentage_and_a_key_stays_on_its_side():
    keys = [f"customer-{i}" for i in range(20_000)]
    share = sum(takes_small_model(_route(CANARY, 10), key) for key in keys) / len(keys)
    assert share == pytest.approx(0.10, abs=0.01)
    assert all(takes_small_model(_route(CANARY, 10), k) == takes_small_model(_route(CANARY, 10), k) for k in keys[:50])
    assert canary_bucket("customer-1") == canary_bucket("customer-1")
    # Raising the percentage only adds callers: nobody on the small model goes back.
    assert all(takes_small_model(_route(CANARY, 30), k) for k in keys if takes_small_model(_route(CANARY, 10), k))
    assert not takes_small_model(_route(SHADOW), "x") and takes_small_model(_route(SMALL), "x")


def test_a_route_steps_back_one_stage_of_the_rollout_towards_the_frontier():
    stages = AutopilotPolicy()  # shadow -> canary 10% -> canary 50% -> small
    walked = [_route(SMALL)]
    while walked[-1].mode != FRONTIER:
        walked.append(step_back(walked[-1], stages))
    assert [route.label for route in walked] == ["small", "canary 50%", "canary 10%", "shadow", "frontier"]
    assert step_back(_route(CANARY, 25), stages).label == "canary 10%"  # set between two stages: the one below
    assert step_back(_route(CANARY, 5), stages).mode == SHADOW
    custom = AutopilotPolicy(stages=("shadow", "canary 5", "small"), min_dwell_s=(0, 0))
    assert step_back(_route(SMALL), custom).label == "canary 5%"
    with pytest.raises(ValueError, match="needs the small model's URL"):
        Route("triage", SHADOW)
    with pytest.raises(ValueError, match="unknown route mode"):
        Route("triage", "half")


@pytest.mark.parametrize("failures, breach", [(1, False), (2, True)])
def test_the_monitor_trips_on_the_error_rate_only_past_its_threshold(failures, breach):
    monitor = RolloutMonitor(RollbackPolicy(min_samples=20, max_error_rate=0.05))
    for i in range(20):
        monitor.observe(ok=i >= failures, latency_ms=10, now=100.0)
    assert (monitor.breach(now=100.0) is not None) is breach  # 1/20 = 5% is allowed, 2/20 is not


def test_the_monitor_trips_on_latency_and_disagreement_and_forgets_old_outcomes():
    slow = RolloutMonitor(RollbackPolicy(min_samples=10, max_p95_latency_ms=500))
    for _ in range(10):
        slow.observe(ok=True, latency_ms=800, now=0.0)
    assert "p95 latency 800 ms" in slow.breach(now=1.0)
    assert slow.breach(now=61.0) is None  # out of the 60 s window
    shadow = RolloutMonitor(RollbackPolicy(min_samples=10, max_disagreement_rate=0.3))
    for i in range(10):
        shadow.observe(ok=True, latency_ms=5, agreed=i >= 3, now=0.0)
    assert shadow.breach(now=0.0) is None  # 30% disagreement is the limit
    shadow.observe(ok=True, latency_ms=5, agreed=False, now=0.0)
    assert "shadow/audit disagreement" in shadow.breach(now=0.0)


@pytest.fixture
def store(tmp_path):
    logs = LogStore(f"sqlite:///{tmp_path / 'logs.db'}")
    logs.upgrade()
    return logs


def test_routes_and_their_history_are_stored(store):
    routes = RouteStore(store.engine)
    assert routes.get("triage") is None
    routes.set(_route(SHADOW), "deployed v1")
    routes.set(_route(CANARY, 10), "by hand")
    assert routes.get("triage") == _route(CANARY, 10)
    [latest, first] = routes.events("triage")
    assert (first.from_mode, first.to_mode, latest.from_mode, latest.to_mode) == (None, "shadow", "shadow", "canary 10%")


@pytest.fixture
def stubs():
    frontier, small = StubUpstream().start(), StubUpstream(answer="small").start()
    yield frontier, small
    frontier.stop()
    small.stop()


def _gateway(tmp_path, frontier_url: str, **settings) -> BackgroundGateway:
    config = GatewayConfig.single(frontier_url, models={"gpt-x": Price(1.0, 4.0)}, port=0, require_api_key=False,
                                  journal_path=tmp_path / "journal.jsonl", log_store_url=f"sqlite:///{tmp_path}/logs.db",
                                  route_refresh_s=0.05, **settings)
    return BackgroundGateway(config)


def _client(gateway: BackgroundGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url, api_key="unused", max_retries=0,
                         default_headers={"X-Distillery-Workload": "triage"})


def _settle(gateway: BackgroundGateway, rows: int, workload: str = "triage") -> LogStore:
    logs = LogStore(gateway.gateway.recorder.store.url)
    deadline = time.monotonic() + 10
    while len(logs.read(workload)) < rows:
        assert time.monotonic() < deadline, f"{len(logs.read(workload))} rows, expected {rows}"
        time.sleep(0.05)
    return logs


def test_shadow_answers_from_the_frontier_and_logs_the_small_models_copy(tmp_path, stubs, store):
    frontier, small = stubs
    RouteStore(store.engine).set(_route(SHADOW, url=small.url), "test")
    with _gateway(tmp_path, frontier.url) as gateway:
        answer = _client(gateway).chat.completions.create(model="gpt-x", messages=MESSAGES)
        assert answer.choices[0].message.content == "ok"
        logs = _settle(gateway, 2)
    rows = logs.read("triage").set_index("served_by")
    assert rows.loc["frontier", "response_text"] == "ok" and rows.loc["shadow", "response_text"] == "small"
    assert rows.loc["shadow", "request_params"]["agrees_with_frontier"] is False
    assert rows.loc["shadow", "request_params"]["shadow_of"] == rows.loc["frontier", "uid"]
    assert list(logs.read("triage", frontier_only=True)["served_by"]) == ["frontier"]  # training data


def test_a_canary_sends_exactly_the_hashed_share_to_the_small_model(tmp_path, stubs, store):
    frontier, small = stubs
    RouteStore(store.engine).set(_route(CANARY, 30, url=small.url), "test")
    keys = [f"caller-{i}" for i in range(60)]
    with _gateway(tmp_path, frontier.url) as gateway:
        client = _client(gateway)
        answers = {key: client.chat.completions.create(model="gpt-x", messages=MESSAGES, user=key)
                   .choices[0].message.content for key in keys}
        metrics = urllib.request.urlopen(gateway.url.removesuffix("/v1") + "/metrics").read().decode()
    expected = {key for key in keys if canary_bucket(key) < 30}
    assert {key for key, text in answers.items() if text == "small"} == expected and 0 < len(expected) < 60
    # Money at the frontier's price, per side: paid for the frontier's answers, avoided for the small model's.
    spend = {side: float(re.search(rf'distillery_gateway_frontier_usd_total{{served_by="{side}",workload="triage"}} '
                                   r"(\S+)", metrics).group(1)) for side in ("frontier", "small")}
    rows = store.read("triage").groupby(store.read("triage")["served_by"].fillna("frontier"))["cost_usd"].sum()
    assert spend == pytest.approx({"frontier": rows["frontier"], "small": rows["small"]}) and spend["small"] > 0


def test_a_dead_small_model_fails_no_request_and_the_route_rolls_back(tmp_path, stubs, store):
    frontier, small = stubs
    routes = RouteStore(store.engine)
    routes.set(_route(SMALL, url=small.url), "test")
    small.stop()  # the small-model server is gone
    policy = RollbackPolicy(min_samples=5, max_error_rate=0.2)
    with _gateway(tmp_path, frontier.url, rollback=policy, small_timeout_s=2) as gateway:
        client = _client(gateway)
        answers = [client.chat.completions.create(model="gpt-x", messages=MESSAGES, user=f"u{i}")
                   .choices[0].message.content for i in range(12)]
        metrics = _client(gateway).with_raw_response.models.list().http_response  # keeps the connection warm
        deadline = time.monotonic() + 5
        while routes.get("triage").mode == SMALL:
            assert time.monotonic() < deadline, "the rollback was not stored"
            time.sleep(0.05)
        text = gateway.gateway.metrics.registry.get_sample_value("distillery_gateway_rollbacks_total",
                                                                 {"workload": "triage"})
    assert answers == ["ok"] * 12 and metrics.status_code == 200  # every caller got the frontier's answer
    assert text >= 1
    rollback = routes.events("triage")[0]
    assert (rollback.kind, rollback.from_mode, rollback.to_mode) == ("rollback", "small", "canary 50%")
    assert rollback.reason.startswith("automatic: error rate")


def test_an_invalid_answer_falls_back_to_the_frontier_and_rolls_the_route_back(tmp_path, stubs, store):
    frontier, small = stubs  # the small model answers "small": not one of the workload's labels
    routes = RouteStore(store.engine)
    routes.set(Route("triage", SMALL, 0, small.url, "triage", DecodingPolicy(labels=("billing", "shipping"))), "test")
    assert routes.get("triage").policy == DecodingPolicy(labels=("billing", "shipping"))
    with _gateway(tmp_path, frontier.url, rollback=RollbackPolicy(min_samples=5)) as gateway:
        client = _client(gateway)
        answers = [client.chat.completions.create(model="gpt-x", messages=MESSAGES, user=f"u{i}",
                                                  response_format={"type": "json_object"})
                   .choices[0].message.content for i in range(6)]
        logs = _settle(gateway, 6)
        deadline = time.monotonic() + 5
        while not routes.events("triage")[0].kind == "rollback":
            assert time.monotonic() < deadline, "the rollback was not stored"
            time.sleep(0.05)
    assert answers == ["ok"] * 6
    # The small model was asked under the route's policy, in vLLM's terms, instead of the caller's own format.
    assert small.last_body["model"] == "triage" and "response_format" not in small.last_body
    assert small.last_body["structured_outputs"] == {"choice": ["billing", "shipping"]}
    assert logs.read("triage")["request_params"][0]["distillery_fallback"] == "invalid answer: small"
    assert routes.events("triage")[0].reason.startswith("automatic: invalid-answer rate 100.0%")


def test_valid_answers_by_workload_kind():
    labels = Route("t", SMALL, 0, "http://x/v1", "t", DecodingPolicy(labels=("billing", "shipping")))
    assert labels.valid_answer(" Billing.") and not labels.valid_answer("refund")
    extraction = Route("t", SMALL, 0, "http://x/v1", "t", DecodingPolicy(json_object=True))
    assert extraction.valid_answer('{"city": "Rome"}') and not extraction.valid_answer("Rome")
    assert Route("t").valid_answer("anything")


TOOL_ANSWER = '{"tool_calls": [{"name": "route_ticket", "arguments": {"queue": "billing"}}]}'
TOOL_PARAMETERS = {"type": "object", "properties": {"queue": {"type": "string"}}, "required": ["queue"]}


@pytest.fixture
def tool_stubs():
    frontier, small = StubUpstream().start(), StubUpstream(answer=TOOL_ANSWER).start()
    yield frontier, small
    frontier.stop()
    small.stop()


def _tool_route(url: str) -> Route:
    return Route("triage", SMALL, 0, url, "triage", DecodingPolicy(json_object=True, tool_calls=True))


@pytest.mark.parametrize("stream", [False, True])
def test_in_small_the_caller_gets_the_small_models_tool_calls_in_its_own_api(tmp_path, tool_stubs, store,
                                                                             monkeypatch, stream):
    import anthropic

    frontier, small = tool_stubs
    routes = RouteStore(store.engine)
    routes.set(_tool_route(small.url), "test")
    assert routes.get("triage").policy.tool_calls  # the mark survives the database
    monkeypatch.setenv("TEST_ANTHROPIC_KEY", "sk-ant")
    config = GatewayConfig(
        upstreams={"openai": Upstream("openai", frontier.url), "claude": Upstream(
            "claude", frontier.url, "TEST_ANTHROPIC_KEY", kind="anthropic")}, default_upstream="openai", port=0,
        require_api_key=False, journal_path=tmp_path / "journal", log_store_url=f"sqlite:///{tmp_path}/logs.db")
    tools = [{"type": "function", "function": {"name": "route_ticket", "parameters": TOOL_PARAMETERS}},
             {"type": "function", "function": {"name": "escalate", "parameters": {"type": "object"}}}]
    with BackgroundGateway(config) as gateway:
        client = _client(gateway)
        chat = client.chat.completions.create(model="gpt-x", messages=MESSAGES, tools=tools, stream=stream,
                                              tool_choice={"type": "function", "function": {"name": "route_ticket"}})
        if stream:
            chunks = list(chat)
            [call] = [c for chunk in chunks if chunk.choices for c in chunk.choices[0].delta.tool_calls or ()
                      if c.function.name]
            arguments = "".join(c.function.arguments or "" for chunk in chunks if chunk.choices
                                for c in chunk.choices[0].delta.tool_calls or ())
        else:
            [call] = chat.choices[0].message.tool_calls
            arguments = call.function.arguments
            assert chat.choices[0].finish_reason == "tool_calls" and chat.choices[0].message.content is None
        assert (call.function.name, json.loads(arguments)) == ("route_ticket", {"queue": "billing"})
        # Asked under the schema of this call's own tools, narrowed to the function it forces; no tools sent.
        schema = small.last_body["structured_outputs"]["json"]
        assert schema["properties"]["tool_calls"]["items"]["properties"]["name"] == {"const": "route_ticket"}
        assert "tools" not in small.last_body and "stream" not in small.last_body

        responses_tools = [{"type": "function", "name": "route_ticket", "parameters": TOOL_PARAMETERS}]
        if stream:
            events = list(client.responses.create(model="gpt-x", input="card charged twice", tools=responses_tools,
                                                  stream=True))
            output = events[-1].response.output
        else:
            output = client.responses.create(model="gpt-x", input="card charged twice", tools=responses_tools).output
        assert [(i.type, i.name, json.loads(i.arguments)) for i in output] == [
            ("function_call", "route_ticket", {"queue": "billing"})]

        claude = anthropic.Anthropic(base_url=gateway.url.removesuffix("/v1"), api_key="x", max_retries=0,
                                     default_headers={"X-Distillery-Workload": "triage"})
        request = dict(model="claude-x", max_tokens=64, messages=[{"role": "user", "content": "card charged twice"}],
                       tools=[{"name": "route_ticket", "input_schema": TOOL_PARAMETERS}])
        if stream:
            with claude.messages.stream(**request) as events:
                message = events.get_final_message()
        else:
            message = claude.messages.create(**request)
        assert [(b.type, b.name, b.input) for b in message.content] == [("tool_use", "route_ticket",
                                                                          {"queue": "billing"})]
        assert message.stop_reason == "tool_use"
        logs = _settle(gateway, 3)
    rows = logs.read("triage")
    assert list(rows["served_by"]) == ["small"] * 3 and frontier.calls == 0
    assert all(json.loads(r[0]["function"]["arguments"]) == {"queue": "billing"} for r in rows["tool_calls"])


@pytest.mark.parametrize("small_answer,served", [("billing", "small"), ("refund", "frontier")])
def test_a_streamed_call_gets_the_small_models_answer_or_before_its_first_byte_the_frontiers(
        tmp_path, store, small_answer, served):
    frontier, small = StubUpstream().start(), StubUpstream(answer=small_answer).start()
    try:
        RouteStore(store.engine).set(Route("triage", SMALL, 0, small.url, "triage",
                                           DecodingPolicy(labels=("billing", "shipping"))), "test")
        with _gateway(tmp_path, frontier.url) as gateway:
            chunks = list(_client(gateway).chat.completions.create(
                model="gpt-x", messages=MESSAGES, stream=True, stream_options={"include_usage": True}))
            logs = _settle(gateway, 1)
    finally:
        frontier.stop()
        small.stop()
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == {"small": "billing", "frontier": "ok"}[served] and chunks[-1].usage.completion_tokens == 1
    [row] = logs.read("triage").itertuples()
    assert row.served_by == served and row.response_text == text


def test_a_tool_schema_that_cannot_be_applied_gets_the_frontiers_answer(tmp_path, tool_stubs, store):
    frontier, small = tool_stubs
    RouteStore(store.engine).set(_tool_route(small.url), "test")
    broken = [{"type": "function", "function": {"name": "route_ticket", "parameters": {"type": 5}}}]
    with _gateway(tmp_path, frontier.url) as gateway:
        answer = _client(gateway).chat.completions.create(model="gpt-x", messages=MESSAGES, tools=broken)
        logs = _settle(gateway, 1)
    assert answer.choices[0].message.tool_calls[0].function.arguments == '{"queue": "billing", "priority": 2}'
    [row] = logs.read("triage").itertuples()
    assert row.served_by == "frontier" and row.request_params["distillery_fallback"].startswith("invalid answer")


def test_the_monitor_counts_audits_as_comparisons_and_watches_a_cascades_coverage():
    monitor = RolloutMonitor(RollbackPolicy(min_samples=10, max_disagreement_rate=0.3, max_coverage_drop=0.2))
    for i in range(10):
        monitor.observe(ok=True, latency_ms=10, now=0.0)
        monitor.observe_coverage(covered=i < 7, now=0.0)
    assert monitor.breach(now=0.0, evaluated_coverage=0.8) is None  # 70% against 80%: within 20 points
    assert "cascade coverage 70.0% over 10 calls" in monitor.breach(now=0.0, evaluated_coverage=0.95)
    for i in range(10):
        monitor.observe_audit(agreed=i < 6, now=0.0)
    assert "shadow/audit disagreement 40.0% over 10 calls" in monitor.breach(now=0.0, evaluated_coverage=0.8)
    assert monitor.breach(now=61.0) is None  # the window forgot them all
