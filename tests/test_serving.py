import openai
import pytest

from distillery.errors import DistilleryError
from distillery.openai_http import OpenAIServer
from distillery.serving import BASE_MODEL_NAME, LocalEndpoints, ModelServer, _alive

PROBE = [{"role": "user", "content": "ticket 3"}]


@pytest.fixture(scope="module")
def model_server(tiny_model_dir, tiny_adapter_dir):
    served = ModelServer(tiny_model_dir, {"triage": tiny_adapter_dir})
    http = OpenAIServer(("127.0.0.1", 0), served.chat, served.models)
    http.start_in_thread()
    yield http
    http.shutdown()


def test_adapter_and_base_model_answer_over_the_openai_api(model_server):
    client = openai.OpenAI(base_url=model_server.url, api_key="local", max_retries=0)
    assert [m.id for m in client.models.list()] == ["triage", BASE_MODEL_NAME]
    tuned = client.chat.completions.create(model="triage", messages=PROBE, max_tokens=8)
    base = client.chat.completions.create(model=BASE_MODEL_NAME, messages=PROBE, max_tokens=8)
    # The tiny test model learns the label's first tokens, not yet where to stop.
    assert tuned.choices[0].message.content.startswith(("billing", "shipping"))
    assert tuned.model == "triage" and tuned.usage.completion_tokens >= 1
    assert base.choices[0].message.content != tuned.choices[0].message.content
    assert base.choices[0].finish_reason == "length"  # the untrained model never says <|im_end|>


def test_bad_requests_are_refused_and_the_server_keeps_serving(model_server):
    client = openai.OpenAI(base_url=model_server.url, api_key="local", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="nope", messages=PROBE)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model="triage", messages=PROBE, max_tokens=0)
    assert client.chat.completions.create(model="triage", messages=PROBE, max_tokens=4).choices


def test_endpoint_process_is_replaced_only_by_one_that_answers(tiny_model_dir, tiny_adapter_dir, tmp_path):
    endpoints = LocalEndpoints(tmp_path / "endpoints", startup_timeout_s=120)
    try:
        first = endpoints.deploy("triage", tiny_model_dir, tiny_adapter_dir, "triage", PROBE)
        client = openai.OpenAI(base_url=first.url, api_key="local", max_retries=0)
        assert client.chat.completions.create(model="triage", messages=PROBE).choices[0].message.content

        with pytest.raises(DistilleryError, match="exited with code"):
            endpoints.deploy("triage", tiny_model_dir, tmp_path / "no-such-adapter", "triage", PROBE)
        assert endpoints.current("triage") == first and _alive(first.pid)

        second = endpoints.deploy("triage", tiny_model_dir, tiny_adapter_dir, "triage", PROBE)
        assert second.url != first.url and not _alive(first.pid)
        assert [e.pid for e in endpoints.all()] == [second.pid]
    finally:
        endpoints.stop("triage")
    assert endpoints.current("triage") is None
