"""The capture gateway on loopback, driven by the real openai client, in front of a stub provider."""

import json
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest
import sqlalchemy as sa
from support.stub_provider import StubUpstream

from distillery.capture import Recorder
from distillery.gateway import BackgroundGateway, GatewayConfig, KeyStore, load_config
from distillery.pricing import Price
from distillery.store import LogStore

PROVIDER_KEY = "sk-provider-secret-123"
PRICES = {"stub-model": Price(input_per_million=1.0, output_per_million=4.0)}
MESSAGES = [{"role": "user", "content": "route this"}]


@pytest.fixture
def stub():
    upstream = StubUpstream(slow_seconds=3).start()
    yield upstream
    upstream.stop()


def _config(tmp_path, upstream_url, **settings) -> GatewayConfig:
    settings.setdefault("log_store_url", f"sqlite:///{tmp_path / 'logs.db'}")
    settings.setdefault("require_api_key", False)
    return GatewayConfig.single(upstream_url, api_key_env="STUB_PROVIDER_KEY", models=PRICES, port=0,
                                journal_path=tmp_path / "journal.jsonl", **settings)


@pytest.fixture
def gateway(tmp_path, stub, monkeypatch):
    monkeypatch.setenv("STUB_PROVIDER_KEY", PROVIDER_KEY)
    with BackgroundGateway(_config(tmp_path, stub.url)) as running:
        yield running


def _client(gateway, key="unused", **headers) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url, api_key=key, max_retries=0, default_headers=headers or None)


def _rows(gateway, workload="default"):
    return LogStore(gateway.gateway.recorder.store.url).read(workload)


def _flushed(gateway, received: int = 0) -> None:
    """The recorder has written what it received (at least ``received`` rows: a streamed call's row is
    handed over after its last event reached the caller, so the caller can be first)."""
    deadline = time.monotonic() + 10
    recorder = gateway.gateway.recorder
    while (recorder.pending or recorder.written + recorder.journaled < recorder.received
           or recorder.received < received):
        assert time.monotonic() < deadline, "recorder did not drain"
        time.sleep(0.02)
    time.sleep(0.05)


def test_chat_completion_is_forwarded_recorded_and_costed(gateway, stub):
    answer = _client(gateway, **{"X-Distillery-Workload": "triage"}).chat.completions.create(
        model="stub-model", messages=MESSAGES, temperature=0)
    assert answer.choices[0].message.content == "ok"
    assert stub.last_authorization == f"Bearer {PROVIDER_KEY}"
    _flushed(gateway)
    [row] = _rows(gateway, "triage").itertuples()
    assert (row.status, row.status_code, row.response_text, row.model) == ("ok", 200, "ok", "stub-model")
    assert row.request_messages == MESSAGES and row.request_params == {"model": "stub-model", "temperature": 0}
    assert (row.prompt_tokens, row.completion_tokens) == (10, 1)
    assert row.cost_usd == pytest.approx((10 * 1.0 + 1 * 4.0) / 1e6)
    assert PROVIDER_KEY not in json.dumps(row.request_params) and row.latency_ms > 0


def test_streamed_chat_passes_events_through_and_records_usage(gateway):
    chunks = list(_client(gateway).chat.completions.create(model="stub-model", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "ok"
    _flushed(gateway, received=1)
    [row] = _rows(gateway).itertuples()
    assert (row.response_text, row.finish_reason, row.prompt_tokens) == ("ok", "stop", 10)
    assert row.cost_usd == pytest.approx(14 / 1e6)


def test_text_completions_endpoint(gateway):
    result = _client(gateway).completions.create(model="stub-model", prompt="say ok")
    assert result.choices[0].text == "ok"
    _flushed(gateway)
    [row] = _rows(gateway).itertuples()
    assert row.endpoint == "completions" and row.request_messages == [{"role": "user", "content": "say ok"}]


def test_a_key_writes_only_to_its_workloads_and_a_foreign_one_is_refused_and_never_stored_under_it(tmp_path, stub):
    config = _config(tmp_path, stub.url, require_api_key=True)
    with BackgroundGateway(config) as gw:
        keys = KeyStore(gw.gateway.recorder.store)
        scoped = keys.create("billing-app", ["invoices", "refunds"])
        importer = keys.create("importer", all_workloads=True)
        # Within its scope a header or metadata.workload picks the workload; the first is the default.
        _client(gw, scoped, **{"X-Distillery-Workload": "refunds"}).chat.completions.create(
            model="stub-model", messages=MESSAGES, metadata={"workload": "invoices"})
        _client(gw, scoped).chat.completions.create(model="stub-model", messages=MESSAGES,
                                                    metadata={"workload": "refunds"})
        _client(gw, scoped).chat.completions.create(model="stub-model", messages=MESSAGES)
        for headers, metadata in (({"X-Distillery-Workload": "beta"}, None), ({}, {"workload": "beta"})):
            with pytest.raises(openai.PermissionDeniedError) as refused:
                _client(gw, scoped, **headers).chat.completions.create(model="stub-model", messages=MESSAGES,
                                                                        metadata=metadata)
            assert refused.value.status_code == 403 and refused.value.code == "permission_denied"
            assert "may not write to workload 'beta' (its scope: invoices, refunds)" in refused.value.message
        _client(gw, importer, **{"X-Distillery-Workload": "beta"}).chat.completions.create(
            model="stub-model", messages=MESSAGES)
        _flushed(gw)
        store = LogStore(config.log_store_url)
        # Only the importer's call is under beta; the refused ones are errors under the key's default workload.
        assert store.workloads() == {"refunds": 2, "invoices": 3, "beta": 1}
        invoices = store.read("invoices")
        refused_rows = invoices[invoices["status_code"] == 403]
        assert len(refused_rows) == 2 and set(refused_rows["status"]) == {"error"}
        assert [params["refused_workload"] for params in refused_rows["request_params"]] == ["beta", "beta"]
        assert store.frontier_rows_after("invoices", 0) == 1  # refused calls never count as training data


def test_the_provider_headers_a_caller_needs_pass_through(gateway, stub):
    client = _client(gateway)
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="rate-limited", messages=MESSAGES)
    headers = limited.value.response.headers
    assert headers["retry-after"] == "7" and headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-request-id"] == f"req-stub-{stub.calls}"
    answer = client.chat.completions.with_raw_response.create(model="stub-model", messages=MESSAGES)
    assert answer.headers["x-request-id"] == f"req-stub-{stub.calls}"
    assert answer.headers["x-ratelimit-limit-requests"] == "500" and answer.parse().choices[0].message.content
    with client.chat.completions.with_streaming_response.create(model="stub-model", messages=MESSAGES,
                                                                stream=True) as streamed:
        assert streamed.headers["x-request-id"] == f"req-stub-{stub.calls}"
        assert "".join(streamed.iter_lines())
    _flushed(gateway)
    [limited_row] = [row for row in _rows(gateway).itertuples() if row.status_code == 429]
    assert limited_row.status == "error"


def test_a_long_stream_is_delivered_whole_and_only_a_quiet_one_is_cut(tmp_path, stub, monkeypatch):
    monkeypatch.setenv("STUB_PROVIDER_KEY", PROVIDER_KEY)
    config = _config(tmp_path, stub.url, upstream_timeout_s=2, stream_idle_timeout_s=2)
    with BackgroundGateway(config) as gw:
        started = time.monotonic()
        stream = _client(gw).chat.completions.create(model="slow-stream", messages=MESSAGES, stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert text == "one two three four five" and time.monotonic() - started > 4  # longer than both timeouts
        stalled = _client(gw).chat.completions.create(model="stalled-stream", messages=MESSAGES, stream=True)
        received = []
        with pytest.raises(openai.APIError):
            for chunk in stalled:
                received.append(chunk.choices[0].delta.content if chunk.choices else "")
        assert "one " in received and "two" not in received
        _flushed(gw)
        rows = {row.model: row for row in _rows(gw).itertuples()}
        assert rows["slow-stream"].status == "ok" and rows["slow-stream"].response_text == text
        assert rows["stalled-stream"].status_code == 502 and "timed out" in rows["stalled-stream"].error
        assert rows["stalled-stream"].response_text == "one "


def test_key_lookups_are_cached_in_a_bounded_lru_and_a_revoked_key_stops_within_the_ttl(tmp_path, stub):
    config = _config(tmp_path, stub.url, require_api_key=True, key_cache_size=8, key_cache_ttl_s=0.5)
    with BackgroundGateway(config) as gw:
        keys = KeyStore(gw.gateway.recorder.store)
        key = keys.create("app", ["default"])
        for attempt in range(50):
            with pytest.raises(openai.AuthenticationError):
                _client(gw, f"dst-random-{attempt}").chat.completions.create(model="stub-model", messages=MESSAGES)
        assert len(gw.gateway._key_cache) <= 8
        assert _client(gw, key).chat.completions.create(model="stub-model", messages=MESSAGES).choices
        assert keys.revoke("app")
        time.sleep(0.6)
        with pytest.raises(openai.AuthenticationError):
            _client(gw, key).chat.completions.create(model="stub-model", messages=MESSAGES)


def test_keys_are_required_hashed_and_revocable(tmp_path, stub):
    config = _config(tmp_path, stub.url, require_api_key=True)
    with BackgroundGateway(config) as gw:
        keys = KeyStore(gw.gateway.recorder.store)
        key = keys.create("app", ["default"])
        with pytest.raises(openai.AuthenticationError, match="unknown or revoked"):
            _client(gw, "dst-not-a-key").chat.completions.create(model="stub-model", messages=MESSAGES)
        assert _client(gw, key).chat.completions.create(model="stub-model", messages=MESSAGES).choices
        with LogStore(config.log_store_url).engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT key_hash FROM api_keys")).scalar_one()
        assert key not in stored and len(stored) == 64
        assert keys.revoke("app")
        gw.gateway._key_cache.clear()  # the gateway re-reads keys after key_cache_ttl_s; skip the wait
        with pytest.raises(openai.AuthenticationError):
            _client(gw, key).chat.completions.create(model="stub-model", messages=MESSAGES)


def _post(url: str, data: bytes, headers=None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_malformed_and_oversized_requests(tmp_path, stub):
    with BackgroundGateway(_config(tmp_path, stub.url, max_body_bytes=2048)) as gw:
        status, body = _post(f"{gw.url}/chat/completions", b"{oops")
        assert status == 400 and "not valid JSON" in body["error"]["message"]
        status, body = _post(f"{gw.url}/chat/completions", b"[1, 2]")
        assert status == 400 and body["error"]["type"] == "invalid_request_error"
        big = json.dumps({"model": "stub-model", "messages": [{"role": "user", "content": "x" * 5000}]}).encode()
        status, body = _post(f"{gw.url}/chat/completions", big)
        assert status == 413 and body["error"]["code"] == "request_too_large"
        status, body = _post(f"{gw.url}/chat/completions", json.dumps({"model": "m", "messages": MESSAGES}).encode(),
                             {"X-Distillery-Workload": "Bad Name!"})
        assert status == 400 and "invalid workload name" in body["error"]["message"]
        assert stub.calls == 0  # nothing malformed reached the provider


def test_upstream_failures_give_openai_errors_and_are_recorded(tmp_path, stub):
    with BackgroundGateway(_config(tmp_path, stub.url, upstream_timeout_s=0.5)) as gw:
        client = _client(gw)
        with pytest.raises(openai.InternalServerError, match="stub upstream failure"):
            client.chat.completions.create(model="fail-500", messages=MESSAGES)
        with pytest.raises(openai.APIStatusError, match="timed out") as timeout:
            client.chat.completions.create(model="slow", messages=MESSAGES)
        assert timeout.value.status_code == 504
        _flushed(gw)
        rows = _rows(gw)
    assert list(zip(rows["status"], rows["status_code"])) == [("error", 500), ("error", 504)]
    assert "stub upstream failure" in rows.iloc[0]["error"]


def test_unreachable_upstream_is_a_502(tmp_path):
    with BackgroundGateway(_config(tmp_path, "http://127.0.0.1:9/v1")) as gw:
        with pytest.raises(openai.APIStatusError, match="unreachable") as refused:
            _client(gw).chat.completions.create(model="stub-model", messages=MESSAGES)
        assert refused.value.status_code == 502
        _flushed(gw)
        assert list(_rows(gw)["status_code"]) == [502]


def test_models_health_and_metrics(gateway):
    models = _client(gateway).models.list().data  # validated by the openai client as openai.types.Model
    assert [(m.id, m.owned_by) for m in models] == [("stub-model", "default")] and models[0].created > 0
    _client(gateway).chat.completions.create(model="stub-model", messages=MESSAGES)
    _post(f"{gateway.url}/chat/completions", b"{oops")
    _flushed(gateway)
    root = gateway.url.removesuffix("/v1")
    health = json.load(urllib.request.urlopen(f"{root}/healthz"))
    assert health == {"status": "ok", "log_store_up": True, "queue_depth": 0, "journal_backlog": 0}
    metrics = urllib.request.urlopen(f"{root}/metrics").read().decode()
    assert 'distillery_gateway_requests_total{endpoint="chat.completions",status="200"} 1.0' in metrics
    assert 'distillery_gateway_errors_total{cause="bad_request"} 1.0' in metrics
    assert "distillery_gateway_request_seconds_bucket" in metrics
    assert "distillery_gateway_rows_written 1.0" in metrics and "distillery_gateway_queue_depth 0.0" in metrics


def test_records_into_postgres(tmp_path, stub, postgres_url):
    with BackgroundGateway(_config(tmp_path, stub.url, log_store_url=postgres_url)) as gw:
        for _ in range(5):
            _client(gw).chat.completions.create(model="stub-model", messages=MESSAGES)
    assert LogStore(postgres_url).workloads() == {"default": 5}


def _row(i: int) -> dict:
    import datetime as dt
    return {"uid": f"{i:032d}", "workload": "w", "created_at": dt.datetime.now(dt.timezone.utc),
            "endpoint": "chat.completions", "request_messages": MESSAGES, "request_params": {},
            "response_text": "ok", "status": "ok"}


def test_database_outage_rows_go_to_the_journal_and_are_replayed(tmp_path, postgres_url, postgres_admin):
    store = LogStore(postgres_url)
    store.upgrade()
    name = store.engine.url.database
    recorder = Recorder(store, tmp_path / "journal.jsonl", batch_size=10, retry_interval_s=0.1).start()
    for i in range(20):
        recorder.submit(_row(i))
    _wait(lambda: recorder.written == 20)

    with postgres_admin.connect() as conn:  # take the database away
        conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
        conn.execute(sa.text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
    for i in range(20, 50):
        recorder.submit(_row(i))
    _wait(lambda: recorder.journaled == 30)
    assert not recorder.database_up and recorder.received == recorder.written + recorder.journaled

    with postgres_admin.connect() as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
    _wait(lambda: recorder.replayed == 30)
    recorder.stop()
    assert recorder.database_up and not (tmp_path / "journal.jsonl").exists()
    rows = store.read("w")
    assert len(rows) == 50 and rows["uid"].is_unique


def test_replaying_a_journal_twice_stores_each_row_once(tmp_path):
    store = LogStore(f"sqlite:///{tmp_path / 'logs.db'}")
    store.upgrade()
    store.insert_rows([_row(i) for i in range(5)])
    journal = tmp_path / "journal.jsonl"
    # as if the gateway had crashed mid-replay: rows 0-4 stored already, 5-9 not yet (a recorder never started
    # leaves what it was given in the journal, as a process that dies does)
    crashed = Recorder(store, journal)
    for i in range(10):
        crashed.submit(_row(i))
    crashed.stop()
    recorder = Recorder(store, journal).start()
    recorder.stop()
    assert len(store.read("w")) == 10 and not journal.exists()


def test_shutdown_flushes_the_queue(tmp_path):
    store = LogStore(f"sqlite:///{tmp_path / 'logs.db'}")
    store.upgrade()
    recorder = Recorder(store, tmp_path / "journal.jsonl", flush_interval_s=5).start()
    threads = [threading.Thread(target=lambda s=s: [recorder.submit(_row(s * 1000 + i)) for i in range(500)])
               for s in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    recorder.stop()
    assert recorder.received == recorder.written == 2000 == len(store.read("w"))


def test_config_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_KEY", "k")
    path = tmp_path / "gateway.toml"
    path.write_text("""
[gateway]
port = 9000
max_body_bytes = 4096

[upstreams.cheap]
base_url = "http://127.0.0.1:1/v1/"
[upstreams.cheap.models."small"]
input_per_million = 0.1
output_per_million = 0.2

[upstreams.main]
base_url = "http://127.0.0.1:2/v1"
api_key_env = "MY_KEY"
default = true
[upstreams.main.models."big"]
input_per_million = 2.5
output_per_million = 10
""")
    config = load_config(path)
    assert (config.port, config.max_body_bytes, config.default_upstream) == (9000, 4096, "main")
    assert config.upstream_for("small").base_url == "http://127.0.0.1:1/v1"
    assert config.upstream_for("unknown").name == "main" and config.upstream_for("big").api_key == "k"
    assert config.price_for("big").cost(1_000_000, 100_000) == pytest.approx(3.5)


def _wait(condition, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)
