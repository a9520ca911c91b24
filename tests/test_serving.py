import functools
import json
import urllib.error
import urllib.request

import openai
import pytest

from distillery.errors import DistilleryError
from distillery.serving import (BASE_MODEL_NAME, REMOTE, BatchingEngine, Endpoints, ModelServer, OpenAIServer,
                                generate, load_model, serve_under_load, using_adapter)
from distillery.tasks import DecodingPolicy, confidence_measures
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
    def post(path, body):
        return _post(model_server, path, body)

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


LABELS = ("billing", "shipping", "refund request")
CONVERSATIONS = [[{"role": "user", "content": f"ticket {i}: {'charged' if i % 2 else 'parcel'} " + "x" * (i % 5)}]
                 for i in range(12)]


def test_concurrent_requests_are_batched_and_answered_as_generate_answers_them(tiny_model_dir, tiny_adapter_dir):
    model, tokenizer = load_model(tiny_model_dir, {"triage": tiny_adapter_dir})
    policy = DecodingPolicy(labels=LABELS)
    with using_adapter(model, "triage"):
        evaluated = [g.text for g in generate(model, tokenizer, CONVERSATIONS, max_new_tokens=8, policy=policy)]
    engine = BatchingEngine(model, tokenizer, max_batch=16)
    try:
        served = serve_under_load(engine, CONVERSATIONS, concurrency=12, adapter="triage", policy=policy,
                                  max_new_tokens=8)
        alone = engine.answer(CONVERSATIONS[0], adapter="triage", policy=policy, max_new_tokens=8)
    finally:
        engine.close()
    assert [g.text for g in served.generations] == evaluated and set(evaluated) <= set(LABELS)
    assert engine.batches_run < len(CONVERSATIONS) + 1  # 12 concurrent callers did not get 12 batches
    assert alone.text == evaluated[0] and alone.latency_ms > 0 and served.requests_per_s > 0


def test_a_json_policy_decodes_objects_the_schema_allows(tiny_model_dir):
    import jsonschema

    schema = {"type": "object", "properties": {"queue": {"enum": ["billing", "shipping"]}, "urgent": {"type": "boolean"}},
              "required": ["queue", "urgent"], "additionalProperties": False}
    model, tokenizer = load_model(tiny_model_dir)
    policy = DecodingPolicy.for_task("extraction", json_schema=schema)
    answers = generate(model, tokenizer, CONVERSATIONS[:4], max_new_tokens=48, policy=policy)
    for answer in answers:  # an untrained model: the grammar alone makes these valid
        jsonschema.validate(json.loads(answer.text), schema)
        assert answer.finish_reason == "stop" and policy.valid_answer(answer.text)
    free = generate(model, tokenizer, CONVERSATIONS[:1], max_new_tokens=16)[0].text
    assert not DecodingPolicy(json_object=True).valid_answer(free)


def test_the_server_decodes_by_the_adapters_recorded_policy_unless_a_request_names_one(model_server,
                                                                                     tiny_adapter_dir, tmp_path):
    labelled = _adapter_copy(tiny_adapter_dir, tmp_path / "labelled")
    DecodingPolicy(labels=LABELS).save(labelled)
    assert _post(model_server, "/load_lora_adapter", {"lora_name": "labelled", "lora_path": str(labelled)})[0] == 200
    client = openai.OpenAI(base_url=model_server.url, api_key="local", max_retries=0)
    ask = functools.partial(client.chat.completions.create, model="labelled", max_tokens=8)
    assert {ask(messages=c).choices[0].message.content for c in CONVERSATIONS[:4]} <= set(LABELS)
    chosen = ask(messages=PROBE, extra_body={"structured_outputs": {"choice": ["alpha", "beta"]}})
    assert chosen.choices[0].message.content in ("alpha", "beta")
    as_json = ask(messages=PROBE, max_tokens=48, response_format={"type": "json_object"}).choices[0].message.content
    assert isinstance(json.loads(as_json), dict)
    with pytest.raises(openai.BadRequestError, match="structured_outputs"):
        ask(messages=PROBE, extra_body={"structured_outputs": {"choice": []}})

    broken = _adapter_copy(tiny_adapter_dir, tmp_path / "broken")
    (broken / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    status, body = _post(model_server, "/load_lora_adapter", {"lora_name": "broken", "lora_path": str(broken)})
    assert status == 400 and body["error"]["code"] == "adapter_load_failed"
    assert "broken" not in [m.id for m in client.models.list()] and ask(messages=PROBE).choices
    assert _post(model_server, "/unload_lora_adapter", {"lora_name": "labelled"})[0] == 200


def test_the_remote_backend_loads_into_a_running_server_by_url_and_starts_nothing(model_server, tiny_model_dir,
                                                                                tiny_adapter_dir, tmp_path):
    local = _adapter_copy(tiny_adapter_dir, tmp_path / "local-side" / "adapter")
    DecodingPolicy(labels=LABELS).save(local)
    # The same shared volume, mounted at another path where the server runs.
    (tmp_path / "server-side").symlink_to(tmp_path / "local-side")
    shared = tmp_path / "server-side" / "adapter"
    endpoints = Endpoints(tmp_path / "endpoints", backend=REMOTE, remote_url=model_server.url,
                          remote_path_map={str(tmp_path / "local-side"): str(tmp_path / "server-side")})
    endpoint = endpoints.deploy("remote", tiny_model_dir, tmp_path / "local-side" / "adapter", "remote-v1", PROBE,
                                DecodingPolicy(labels=LABELS))
    assert endpoint.pid == 0 and endpoint.url == model_server.url and endpoint.adapter_path == str(shared)
    assert endpoints.current("remote") == endpoint and "remote-v1" in _served(model_server)
    assert endpoints.stop("remote") and "remote-v1" not in _served(model_server)

    down = Endpoints(tmp_path / "down", backend=REMOTE, remote_url="http://127.0.0.1:9/v1")
    with pytest.raises(DistilleryError, match="does not answer"):
        down.deploy("remote", tiny_model_dir, shared, "remote-v1", PROBE, DecodingPolicy(labels=LABELS))
    with pytest.raises(ValueError, match="remote_url"):
        Endpoints(tmp_path, backend=REMOTE)


def _served(server) -> list[str]:
    return [m.id for m in openai.OpenAI(base_url=server.url, api_key="local").models.list()]


def _post(server, path, body):
    request = urllib.request.Request(server.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_each_answer_carries_its_tokens_log_probabilities_the_same_in_evaluation_and_serving(tiny_model_dir,
                                                                                           tiny_adapter_dir):
    """A cascade's confidence is made of these: they must not depend on the batch an answer was decoded in."""
    model, tokenizer = load_model(tiny_model_dir, {"triage": tiny_adapter_dir})
    schema = {"type": "object", "properties": {"queue": {"enum": ["billing", "shipping"]}}, "required": ["queue"]}
    policies = {"labels": DecodingPolicy(labels=LABELS), "free": DecodingPolicy(),
                "json": DecodingPolicy.for_task("extraction", json_schema=schema)}
    engine = BatchingEngine(model, tokenizer, max_batch=16)
    try:
        for kind, policy in policies.items():
            with using_adapter(model, "triage"):
                evaluated = generate(model, tokenizer, CONVERSATIONS[:6], max_new_tokens=12, policy=policy)
            alone = [engine.answer(c, adapter="triage", policy=policy, max_new_tokens=12) for c in CONVERSATIONS[:6]]
            for batched, single in zip(evaluated, alone):
                assert single.text == batched.text, kind
                assert batched.token_logprobs and all(lp <= 1e-6 for lp in batched.token_logprobs), kind
                for measure in confidence_measures(policy):
                    assert single.confidence(measure) == pytest.approx(batched.confidence(measure), abs=1e-4), kind
                    assert 0 < batched.confidence(measure) <= 1
            # one log-probability per chosen token, the stop token's included (a label's forced tokens: 0)
            assert all(len(g.token_logprobs) == len(g.token_ids) == g.completion_tokens + (g.finish_reason == "stop")
                       for g in evaluated), kind

    finally:
        engine.close()
