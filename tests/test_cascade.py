"""The confidence cascade at the gateway, on a real model server (the tiny model and its adapter, under a label
policy) and a stub frontier: covered calls answered by the small model, escalated ones by the frontier, audits, the
coverage rollback, and the confidence the gateway records equal to the one evaluation computes."""

import time
import urllib.request

import openai
import pytest
from support.stub_provider import StubUpstream

from distillery.errors import DistilleryError
from distillery.gateway import BackgroundGateway, GatewayConfig
from distillery.pricing import Price
from distillery.routing import CANARY, SMALL, RollbackPolicy, Route, RouteStore
from distillery.serving import ModelServer, OpenAIServer, generate
from distillery.serving.endpoints import _probe
from distillery.store import LogStore
from distillery.tasks import LABEL_PROBABILITY, Cascade, DecodingPolicy

POLICY = DecodingPolicy(labels=("billing", "shipping", "refund request"))
CONVERSATIONS = [[{"role": "user", "content": text}] for text in
                 ["ticket 1", "ticket 2", "ticket 7", "my parcel is late", "refund me", "ticket 12", "hello", "ticket 5",
                  "where is it", "ticket 9", "charged twice", "ticket 14"]]


@pytest.fixture(scope="module")
def small_model(tiny_model_dir, tiny_adapter_dir):
    """The model server, and each conversation's label confidence as evaluation computes it."""
    served = ModelServer(tiny_model_dir, {"triage": tiny_adapter_dir})
    http = OpenAIServer(("127.0.0.1", 0), served.chat, served.models)
    http.start_in_thread()
    engine = served.engine
    with engine.exclusive():
        engine.model.set_adapter("triage")
        evaluated = generate(engine.model, engine.tokenizer, CONVERSATIONS, max_new_tokens=16, policy=POLICY)
    yield http, [g.confidence(LABEL_PROBABILITY) for g in evaluated], [g.text for g in evaluated]
    http.shutdown()


@pytest.fixture
def frontier():
    stub = StubUpstream(answer="billing").start()
    yield stub
    stub.stop()


def _gateway(tmp_path, frontier_url: str, route: Route, **settings) -> BackgroundGateway:
    """A gateway whose log store holds ``route`` from its start."""
    logs = LogStore(f"sqlite:///{tmp_path}/logs.db")
    logs.upgrade()
    RouteStore(logs.engine).set(route, "test")
    config = GatewayConfig.single(frontier_url, models={"gpt-x": Price(1.0, 4.0)}, port=0, require_api_key=False,
                                  journal_path=tmp_path / "journal.jsonl", log_store_url=f"sqlite:///{tmp_path}/logs.db",
                                  route_refresh_s=0.05, **settings)
    return BackgroundGateway(config)


def _ask(gateway: BackgroundGateway, conversations) -> list[str]:
    client = openai.OpenAI(base_url=gateway.url, api_key="unused", max_retries=0,
                           default_headers={"X-Distillery-Workload": "triage"})
    return [client.chat.completions.create(model="gpt-x", messages=c, max_tokens=16).choices[0].message.content
            for c in conversations]


def _rows(gateway: BackgroundGateway, count: int):
    logs = LogStore(gateway.gateway.recorder.store.url)
    deadline = time.monotonic() + 10
    while len(logs.read("triage")) < count:
        assert time.monotonic() < deadline, f"{len(logs.read('triage'))} rows stored, expected {count}"
        time.sleep(0.05)
    return logs.read("triage")


def _route(url: str, threshold: float, coverage: float | None = None, mode: str = SMALL) -> Route:
    return Route("triage", mode, 10.0 if mode == CANARY else 0.0, url, "triage", POLICY,
                 Cascade(threshold, LABEL_PROBABILITY, coverage))


def test_below_the_threshold_the_frontier_answers_and_the_call_is_recorded_as_escalated(tmp_path, small_model,
                                                                                        frontier):
    server, confidences, evaluated = small_model
    ranked = sorted(confidences)
    threshold = (ranked[5] + ranked[6]) / 2  # half the calls on each side
    assert ranked[5] < threshold < ranked[6], "the tiny adapter's confidences must differ to split them"
    with _gateway(tmp_path, frontier.url, _route(server.url, threshold), audit_percent=0) as gateway:
        answers = _ask(gateway, CONVERSATIONS)
        metrics = urllib.request.urlopen(gateway.url.removesuffix("/v1") + "/metrics").read().decode()
        rows = _rows(gateway, len(CONVERSATIONS))
    covered = [c >= threshold for c in confidences]
    assert answers == [small if sure else "billing" for small, sure in zip(evaluated, covered)]
    by_prompt = {row["request_messages"][0]["content"]: row for _, row in rows.iterrows()}
    for conversation, confidence, sure in zip(CONVERSATIONS, confidences, covered):
        row = by_prompt[conversation[0]["content"]]
        # the confidence the gateway recorded from the model server's log-probabilities is evaluation's
        assert row["confidence"] == pytest.approx(confidence, abs=1e-4)
        assert row["served_by"] == ("small" if sure else "frontier") and row["status"] == "ok"
        escalated = row["request_params"].get("distillery_escalated")
        assert (escalated is None) is sure and "distillery_fallback" not in row["request_params"]
        if not sure:
            assert f"< threshold {threshold:.4g}" in escalated["reason"] and escalated["small_answer"] in POLICY.labels
    assert 'distillery_gateway_cascade_covered_total{workload="triage"} 6.0' in metrics
    assert 'distillery_gateway_cascade_escalated_total{workload="triage"} 6.0' in metrics
    assert 'distillery_gateway_fallbacks_total{workload="triage"}' not in metrics  # escalation is not a failure


def test_audited_calls_are_answered_by_the_frontier_too_recorded_and_compared(tmp_path, small_model, frontier):
    server, confidences, evaluated = small_model
    with _gateway(tmp_path, frontier.url, _route(server.url, 0.0), audit_percent=100) as gateway:
        answers = _ask(gateway, CONVERSATIONS[:6])
        client = openai.OpenAI(base_url=gateway.url, api_key="unused", max_retries=0,
                               default_headers={"X-Distillery-Workload": "triage"})
        plain = client.chat.completions.create(model="gpt-x", messages=CONVERSATIONS[0], max_tokens=16)
        asked = client.chat.completions.create(model="gpt-x", messages=CONVERSATIONS[0], max_tokens=16, logprobs=True)
        rows = _rows(gateway, 16)
        metrics = urllib.request.urlopen(gateway.url.removesuffix("/v1") + "/metrics").read().decode()
    assert answers == evaluated[:6]  # the caller has the small model's answer; the audit is off its path
    # the log-probabilities the cascade asked for reach a caller only when it asked for them too
    assert plain.choices[0].logprobs is None and plain.choices[0].message.content == evaluated[0]
    assert [entry.logprob for entry in asked.choices[0].logprobs.content]
    small, audits = rows[rows["served_by"] == "small"], rows[rows["served_by"] == "audit"]
    assert len(small) == len(audits) == 8
    assert set(audits["request_params"].map(lambda p: p["audit_of"])) == set(small["uid"])
    assert list(audits["response_text"]) == ["billing"] * 8
    agreed = [params["agrees_with_frontier"] for params in audits["request_params"]]
    assert sum(agreed) == sum(answer == "billing" for answer in evaluated[:6] + evaluated[:1] * 2)
    assert f'distillery_gateway_cascade_audited_total{{outcome="agreed",workload="triage"}} {float(sum(agreed))}' \
        in metrics
    # audits are not training data: the frontier-only read leaves them out
    assert (LogStore(f"sqlite:///{tmp_path}/logs.db").read("triage", frontier_only=True)["served_by"] != "audit").all()


def test_a_coverage_drop_rolls_the_route_back(tmp_path, small_model, frontier):
    server, confidences, _ = small_model
    # evaluated at 90% coverage; live, a threshold above every confidence covers nothing
    rollback = RollbackPolicy(min_samples=5)
    route = _route(server.url, min(1.0, max(confidences) + 1e-3), coverage=0.9)
    with _gateway(tmp_path, frontier.url, route, audit_percent=0, rollback=rollback) as gateway:
        routes = RouteStore(gateway.gateway.recorder.store.engine)
        answers = _ask(gateway, CONVERSATIONS[:6])
        deadline = time.monotonic() + 5
        while routes.get("triage").mode == SMALL:
            assert time.monotonic() < deadline, "the route was not rolled back"
            time.sleep(0.05)
    assert answers == ["billing"] * 6  # every call escalated: none failed
    [event] = [e for e in routes.events("triage") if e.kind == "rollback"]
    assert event.to_mode.startswith("canary 50%") and "cascade coverage 0.0% over 5 calls" in event.reason


def test_a_route_threshold_outside_0_1_is_refused_and_a_server_without_confidences_is_refused_at_deploy():
    with pytest.raises(ValueError, match="threshold must be a number between 0 and 1"):
        Cascade(1.5, LABEL_PROBABILITY)
    with pytest.raises(ValueError, match="unknown confidence measure"):
        Cascade(0.5, "vibes")
    server = StubUpstream(logprobs=False).start()  # a server that answers without log-probabilities
    try:
        with pytest.raises(DistilleryError, match="without its tokens' log-probabilities"):
            _probe(server.url, "gpt-x", CONVERSATIONS[0], DecodingPolicy(), needs_confidence=True)
        _probe(server.url, "gpt-x", CONVERSATIONS[0], DecodingPolicy())  # without a cascade it is fine
    finally:
        server.stop()


def test_route_set_keeps_the_policy_and_cascade_and_refuses_a_threshold_outside_0_1(distillery_home):
    from typer.testing import CliRunner

    from distillery.cli import app

    store = LogStore()
    store.upgrade()
    routes = RouteStore(store.engine)
    routes.set(_route("http://127.0.0.1:9/v1", 0.9, coverage=0.7, mode=CANARY), "deployed")
    runner = CliRunner()
    moved = runner.invoke(app, ["route", "set", "triage", "small"])
    assert moved.exit_code == 0 and "small (cascade at 0.9)" in moved.output
    assert routes.get("triage").policy == POLICY and routes.get("triage").cascade == Cascade(0.9, LABEL_PROBABILITY, 0.7)
    assert runner.invoke(app, ["route", "set", "triage", "small", "--threshold", "0.95"]).exit_code == 0
    assert routes.get("triage").cascade.threshold == 0.95
    refused = runner.invoke(app, ["route", "set", "triage", "small", "--threshold", "1.5"])
    assert refused.exit_code == 2 and "threshold must be a number between 0 and 1" in refused.output
    assert routes.get("triage").cascade.threshold == 0.95  # nothing changed
    assert runner.invoke(app, ["route", "set", "triage", "small", "--no-cascade"]).exit_code == 0
    assert routes.get("triage").cascade is None and routes.get("triage").label == "small"
