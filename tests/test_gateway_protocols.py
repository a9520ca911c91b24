"""Every API a company calls through the gateway, with its real SDK on loopback: chat completions with tools,
the Responses API and Anthropic's Messages API, streamed and not. The caller gets the provider's answer unchanged
and the stored exchange holds the whole answer: its text or its function calls."""

import json
import time

import anthropic
import openai
import pytest
from support.stub_provider import TOOL_ARGUMENTS, USAGE, StubUpstream

from distillery.errors import DistilleryError
from distillery.gateway import BackgroundGateway, GatewayConfig, Upstream
from distillery.pricing import Price
from distillery.store import LogStore

OPENAI_KEY, ANTHROPIC_KEY = "sk-openai-secret", "sk-ant-secret"
TOOLS = [{"type": "function", "function": {"name": "route_ticket", "parameters": {
    "type": "object", "properties": {"queue": {"type": "string"}, "priority": {"type": "integer"}},
    "required": ["queue"]}}}]
MESSAGES = [{"role": "system", "content": "Route the ticket."}, {"role": "user", "content": "my card was charged twice"}]


@pytest.fixture(scope="module")
def stub():
    upstream = StubUpstream().start()
    yield upstream
    upstream.stop()


def _config(tmp_path, url: str) -> GatewayConfig:
    return GatewayConfig(
        upstreams={"openai": Upstream("openai", url, "TEST_OPENAI_KEY", {"gpt-x": Price(1.0, 4.0)}),
                   "anthropic": Upstream("anthropic", url, "TEST_ANTHROPIC_KEY", {"claude-x": Price(3.0, 15.0)},
                                         kind="anthropic")},
        default_upstream="openai", port=0, require_api_key=False, journal_path=tmp_path / "journal",
        log_store_url=f"sqlite:///{tmp_path / 'logs.db'}")


@pytest.fixture
def gateway(tmp_path, stub, monkeypatch):
    monkeypatch.setenv("TEST_OPENAI_KEY", OPENAI_KEY)
    monkeypatch.setenv("TEST_ANTHROPIC_KEY", ANTHROPIC_KEY)
    with BackgroundGateway(_config(tmp_path, stub.url)) as running:
        yield running


def _openai(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url, api_key="unused", max_retries=0)


def _anthropic(gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url.removesuffix("/v1"), api_key="unused", max_retries=0)


def _rows(gateway, count: int):
    recorder = gateway.gateway.recorder
    deadline = time.monotonic() + 10
    while recorder.written < count:
        assert time.monotonic() < deadline, "the recorder did not store the rows"
        time.sleep(0.02)
    return list(LogStore(recorder.store.url).read("default").itertuples())


@pytest.mark.parametrize("stream", [False, True])
def test_chat_tool_calls_reach_the_caller_unchanged_and_are_stored_whole(gateway, stub, stream):
    client = _openai(gateway)
    if stream:
        chunks = list(client.chat.completions.create(model="gpt-x", messages=MESSAGES, tools=TOOLS,
                                                     tool_choice="required", stream=True))
        deltas = [call for chunk in chunks if chunk.choices for call in chunk.choices[0].delta.tool_calls or ()]
        name, arguments = deltas[0].function.name, "".join(d.function.arguments or "" for d in deltas)
    else:
        answer = client.chat.completions.create(model="gpt-x", messages=MESSAGES, tools=TOOLS, tool_choice="required")
        assert answer.choices[0].message.content is None and answer.choices[0].finish_reason == "tool_calls"
        [call] = answer.choices[0].message.tool_calls
        name, arguments = call.function.name, call.function.arguments
    assert (name, arguments) == ("route_ticket", TOOL_ARGUMENTS)
    [row] = _rows(gateway, 1)
    assert row.status == "ok" and row.response_text in (None, "") and row.finish_reason == "tool_calls"
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in row.tool_calls] == [(name, arguments)]
    assert row.request_params["tools"] == TOOLS and row.request_params["tool_choice"] == "required"
    assert (row.prompt_tokens, row.completion_tokens) == USAGE and row.cost_usd == pytest.approx(14 / 1e6)


def test_parallel_calls_and_arguments_that_are_not_json_are_stored_as_the_provider_sent_them(gateway):
    client = _openai(gateway)
    answer = client.chat.completions.create(model="parallel-tools", messages=MESSAGES, tools=TOOLS)
    assert len(answer.choices[0].message.tool_calls) == 2
    broken = client.chat.completions.create(model="bad-arguments", messages=MESSAGES, tools=TOOLS)
    assert broken.choices[0].message.tool_calls[0].function.arguments == "{not json"
    parallel, bad = _rows(gateway, 2)
    assert [c["id"] for c in parallel.tool_calls] == [c.id for c in answer.choices[0].message.tool_calls]
    assert bad.status == "ok" and bad.tool_calls[0]["function"]["arguments"] == "{not json"


@pytest.mark.parametrize("stream", [False, True])
def test_responses_api_text_and_function_calls(gateway, stub, stream):
    client = _openai(gateway)
    if stream:
        events = list(client.responses.create(model="gpt-x", instructions="Route the ticket.",
                                              input="my card was charged twice", stream=True))
        assert events[-1].type == "response.completed" and events[-1].response.output_text == "ok"
        assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "ok"
    else:
        answer = client.responses.create(model="gpt-x", instructions="Route the ticket.",
                                         input="my card was charged twice", extra_body={"store_hint": 7})
        assert answer.output_text == "ok" and answer.usage.input_tokens == USAGE[0]
        assert stub.last_body["store_hint"] == 7  # a field the gateway does not know is passed through untouched
    called = client.responses.create(model="gpt-x", input="my card was charged twice", tools=[
        {"type": "function", "name": "route_ticket", "parameters": TOOLS[0]["function"]["parameters"]}],
        tool_choice="required")
    [call] = [item for item in called.output if item.type == "function_call"]
    assert (call.name, call.arguments) == ("route_ticket", TOOL_ARGUMENTS)
    text_row, call_row = _rows(gateway, 2)
    assert text_row.endpoint == "responses" and text_row.request_messages == MESSAGES
    assert (text_row.response_text, text_row.finish_reason, text_row.prompt_tokens) == ("ok", "stop", USAGE[0])
    assert text_row.cost_usd == pytest.approx(14 / 1e6) and "input" not in text_row.request_params
    assert call_row.tool_calls[0]["function"] == {"name": "route_ticket", "arguments": TOOL_ARGUMENTS}
    assert call_row.tool_calls[0]["id"] == call.call_id and call_row.finish_reason == "tool_calls"


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_messages_go_to_the_anthropic_upstream_with_its_key(gateway, stub, stream):
    client = _anthropic(gateway)
    request = dict(model="claude-x", max_tokens=64, system="Route the ticket.",
                   messages=[{"role": "user", "content": "my card was charged twice"}])
    if stream:
        with client.messages.stream(**request) as events:
            answer = events.get_final_message()
    else:
        answer = client.messages.create(**request)
    assert answer.content[0].text == "ok" and answer.stop_reason == "end_turn"
    # the provider key replaces the caller's; the API version the SDK asked for is kept
    assert stub.last_api_key == ANTHROPIC_KEY
    assert stub.last_anthropic_version == client.default_headers["anthropic-version"]
    assert stub.last_authorization is None  # the OpenAI upstream's key never goes to Anthropic
    tools = [{"name": "route_ticket", "input_schema": TOOLS[0]["function"]["parameters"]}]
    called = client.messages.create(**request, tools=tools, tool_choice={"type": "any"})
    [block] = [b for b in called.content if b.type == "tool_use"]
    assert (block.name, block.input) == ("route_ticket", json.loads(TOOL_ARGUMENTS))
    text_row, call_row = _rows(gateway, 2)
    assert text_row.endpoint == "messages" and text_row.request_messages == MESSAGES
    assert (text_row.response_text, text_row.finish_reason, text_row.upstream) == ("ok", "stop", "anthropic")
    assert text_row.cost_usd == pytest.approx((10 * 3.0 + 15.0) / 1e6)
    assert call_row.tool_calls[0]["id"] == block.id and call_row.finish_reason == "tool_calls"
    assert json.loads(call_row.tool_calls[0]["function"]["arguments"]) == block.input


def test_anthropic_errors_are_anthropic_errors(tmp_path, stub, monkeypatch):
    monkeypatch.setenv("TEST_ANTHROPIC_KEY", ANTHROPIC_KEY)
    config = _config(tmp_path, stub.url)
    config.require_api_key = True
    with BackgroundGateway(config) as gw:
        with pytest.raises(anthropic.AuthenticationError) as refused:
            _anthropic(gw).messages.create(model="claude-x", max_tokens=8, messages=[{"role": "user", "content": "x"}])
        assert "unknown or revoked gateway API key" in refused.value.message


def test_an_anthropic_upstream_without_its_key_stops_the_gateway_naming_the_variable(tmp_path, stub, monkeypatch):
    monkeypatch.delenv("TEST_ANTHROPIC_KEY", raising=False)
    with pytest.raises(DistilleryError, match="set the environment variable TEST_ANTHROPIC_KEY"):
        BackgroundGateway(_config(tmp_path, stub.url)).__enter__()


def test_messages_without_an_anthropic_upstream_are_a_clear_404(tmp_path, stub):
    config = GatewayConfig.single(stub.url, port=0, require_api_key=False, journal_path=tmp_path / "journal",
                                  log_store_url=f"sqlite:///{tmp_path / 'logs.db'}")
    with BackgroundGateway(config) as gw:
        with pytest.raises(anthropic.NotFoundError, match='kind = "anthropic"'):
            _anthropic(gw).messages.create(model="claude-x", max_tokens=8, messages=[{"role": "user", "content": "x"}])
