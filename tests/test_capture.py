import openai
import pytest

from distillery.capture import Recorder, capture
from distillery.demo import STANDIN_MODEL, demo_messages, start_frontier_standin
from distillery.serving import OpenAIServer
from distillery.store import LogStore


@pytest.fixture
def store(tmp_path):
    store = LogStore(f"sqlite:///{tmp_path / 'logs.db'}")
    store.upgrade()
    return store


@pytest.fixture
def recorder(store, tmp_path):
    return Recorder(store, tmp_path / "journal.jsonl").start()


def test_successful_calls_are_recorded(store, recorder):
    server = start_frontier_standin()
    try:
        client = capture(openai.OpenAI(base_url=server.url, api_key="x"), recorder, "triage")
        answer = client.chat.completions.create(model=STANDIN_MODEL, messages=demo_messages("charged twice"),
                                                max_tokens=8)
        streamed = list(client.chat.completions.create(model=STANDIN_MODEL, messages=demo_messages("hacked!"),
                                                       stream=True))
    finally:
        server.shutdown()
        recorder.stop()
    assert answer.choices[0].message.content == "billing"
    assert streamed
    rows = store.read("triage")
    assert list(rows["response_text"]) == ["billing", "security"]
    assert list(rows["status"]) == ["ok", "ok"]
    assert rows.iloc[0]["request_params"] == {"model": STANDIN_MODEL, "max_tokens": 8}
    assert rows.iloc[0]["request_messages"] == demo_messages("charged twice")
    assert rows.iloc[1]["finish_reason"] == "stop"
    assert (rows["prompt_tokens"] > 0).all()


def test_provider_errors_are_recorded_as_failures_and_re_raised(store, recorder):
    def broken(_body):
        raise RuntimeError("model fell over")

    server = OpenAIServer(("127.0.0.1", 0), broken, lambda: ["m"])
    server.start_in_thread()
    try:
        client = capture(openai.OpenAI(base_url=server.url, api_key="x", max_retries=0), recorder, "triage")
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    finally:
        server.shutdown()
        recorder.stop()
    [row] = store.read("triage").itertuples()
    assert row.status == "error" and row.status_code == 500
    assert "model fell over" in row.error
    assert row.response_text is None
