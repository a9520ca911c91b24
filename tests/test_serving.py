import openai
import pytest

from distillery.errors import DistilleryError
from distillery.serving import BASE_MODEL_NAME, Endpoints, ModelServer, OpenAIServer
from distillery.serving.endpoints import _alive

PROBE = [{"role": "user", "content": "ticket 3"}]


@pytest.fixture(scope="module")
def model_server(tiny_model_dir, tiny_adapter_dir):
    served = ModelServer(tiny_model_dir, {"triage": tiny_adapter_dir})
    http = OpenAIServer(("127.0.0.1", 0), served.chat, served.models,
                        {"/v1/load_lora_adapter": served.load_adapter, "/v1/unload_lora_adapter": served.unload_adapter})
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


def _adapter_copy(source, target, **changes):
    """The adapter with its config edited (and, with ``weights=False``, without its weights)."""
    import json
    import shutil

    weights = changes.pop("weights", True)
    shutil.copytree(source, target, ignore=None if weights else shutil.ignore_patterns("*.safetensors", "*.bin"))
    config = json.loads((target / "adapter_config.json").read_text())
    (target / "adapter_config.json").write_text(json.dumps({**config, **changes}))
    return target


def test_a_new_adapter_loads_beside_the_served_one_only_if_it_fits_and_answers(tiny_model_dir, tiny_adapter_dir,
                                                                              tmp_path):
    endpoints = Endpoints(tmp_path / "endpoints", startup_timeout_s=120)
    try:
        first = endpoints.deploy("triage", tiny_model_dir, tiny_adapter_dir, "triage-v1", PROBE)
        client = openai.OpenAI(base_url=first.url, api_key="local", max_retries=0)
        assert client.chat.completions.create(model="triage-v1", messages=PROBE).choices[0].message.content

        with pytest.raises(DistilleryError, match="no readable adapter_config.json"):
            endpoints.deploy("triage", tiny_model_dir, tmp_path / "no-such-adapter", "triage-v2", PROBE)
        other_base = _adapter_copy(tiny_adapter_dir, tmp_path / "other-base", base_model_name_or_path="other/model")
        with pytest.raises(DistilleryError, match="trained on 'other/model'"):
            endpoints.deploy("triage", tiny_model_dir, other_base, "triage-v2", PROBE)
        wrong_modules = _adapter_copy(tiny_adapter_dir, tmp_path / "wrong-modules", target_modules=["no_such_proj"])
        with pytest.raises(DistilleryError, match="does not have"):
            endpoints.deploy("triage", tiny_model_dir, wrong_modules, "triage-v2", PROBE)
        assert endpoints.current("triage") == first and [m.id for m in client.models.list()] == ["triage-v1", "base"]

        second = endpoints.deploy("triage", tiny_model_dir, tiny_adapter_dir, "triage-v2", PROBE)
        assert (second.url, second.pid, second.model) == (first.url, first.pid, "triage-v2")
        assert [m.id for m in client.models.list()] == ["triage-v1", "triage-v2", "base"]  # v1 kept for rollback

        # Another workload on the same base model shares the server; an adapter that cannot load is refused.
        no_weights = _adapter_copy(tiny_adapter_dir, tmp_path / "no-weights", weights=False)
        with pytest.raises(DistilleryError, match="refused adapter"):
            endpoints.deploy("billing", tiny_model_dir, no_weights, "billing-v1", PROBE)
        assert endpoints.current("billing") is None
        billing = endpoints.deploy("billing", tiny_model_dir, tiny_adapter_dir, "billing-v1", PROBE)
        assert billing.pid == first.pid and "billing-v1" in [m.id for m in client.models.list()]
        assert endpoints.stop("billing") and _alive(first.pid)  # triage still needs the server
    finally:
        endpoints.stop("triage")
    assert endpoints.current("triage") is None and not _alive(first.pid)


def test_a_server_that_cannot_start_never_becomes_an_endpoint(tiny_model_dir, tiny_adapter_dir, tmp_path):
    endpoints = Endpoints(tmp_path / "endpoints", startup_timeout_s=120)
    no_weights = _adapter_copy(tiny_adapter_dir, tmp_path / "no-weights", weights=False)
    with pytest.raises(DistilleryError, match="exited with code"):
        endpoints.deploy("billing", tiny_model_dir, no_weights, "billing-v1", PROBE)
    assert endpoints.current("billing") is None and endpoints.all() == []
    with pytest.raises(ValueError, match="unknown serving backend"):
        Endpoints(tmp_path, backend="triton")


def test_adapters_load_and_unload_at_run_time_over_vllms_routes(model_server, tiny_adapter_dir):
    import json
    import urllib.error
    import urllib.request

    def post(path, body):
        request = urllib.request.Request(model_server.url + path, json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    client = openai.OpenAI(base_url=model_server.url, api_key="local", max_retries=0)
    assert post("/load_lora_adapter", {"lora_name": "extra", "lora_path": str(tiny_adapter_dir)})[0] == 200
    assert client.chat.completions.create(model="extra", messages=PROBE, max_tokens=4).choices
    status, body = post("/load_lora_adapter", {"lora_name": "extra", "lora_path": str(tiny_adapter_dir)})
    assert status == 400 and "already loaded" in body["error"]["message"]
    assert post("/unload_lora_adapter", {"lora_name": "extra"})[0] == 200
    assert "extra" not in [m.id for m in client.models.list()]
    assert post("/unload_lora_adapter", {"lora_name": "extra"})[0] == 404


def test_a_killed_server_is_not_reused_and_a_new_one_starts(tiny_model_dir, tiny_adapter_dir, tmp_path):
    import os
    import signal
    import time

    endpoints = Endpoints(tmp_path / "endpoints", startup_timeout_s=120)
    try:
        first = endpoints.deploy("triage", tiny_model_dir, tiny_adapter_dir, "triage-v1", PROBE)
        os.killpg(first.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(first.pid):
            assert time.monotonic() < deadline, "a killed server still counts as alive"
            time.sleep(0.1)
        second = endpoints.deploy("triage", tiny_model_dir, tiny_adapter_dir, "triage-v1", PROBE)
        assert second.pid != first.pid and endpoints.current("triage") == second
    finally:
        endpoints.stop("triage")
