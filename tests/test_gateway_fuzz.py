"""Property-based: malformed and odd requests thrown at a real gateway on loopback (hypothesis).

Three properties: the gateway never crashes (it answers every request with an HTTP status and keeps
serving), a request it cannot use gets the right 4xx, and every call it accepted is recorded; for chat completions,
the Responses API and Anthropic's Messages API alike (odd inputs, contents, tools and tool choices).
"""

import json
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.stub_provider import StubUpstream

from distillery.gateway import BackgroundGateway, GatewayConfig, Upstream
from distillery.store import LogStore

MAX_BODY = 4096
# Statuses the gateway itself answers before it forwards a call: those calls are not recorded.
REFUSED = {400, 404, 405, 408, 411, 413, 431, 501, 505}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12)
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool", ""]),
                                           "content": st.text(max_size=40) | st.none() | st.integers()}),
                    max_size=3)
chat_bodies = st.fixed_dictionaries(
    {"model": st.sampled_from(["stub-model", "", "x" * 300]) | st.integers() | st.none(), "messages": messages},
    optional={"stream": st.booleans() | st.integers(), "metadata": json_values, "max_tokens": json_values,
              "temperature": json_values, "user": json_values})
workload_headers = st.sampled_from([None, "ok-workload", "../etc", "", "x" * 200, "spaces in name", "ünïcode"])


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    stub = StubUpstream().start()
    config = GatewayConfig(
        upstreams={"openai": Upstream("openai", stub.url),
                   "claude": Upstream("claude", stub.url, "FUZZ_ANTHROPIC_KEY", kind="anthropic")},
        default_upstream="openai", port=0, require_api_key=False, max_body_bytes=MAX_BODY,
        journal_path=folder / "journal.jsonl", log_store_url=f"sqlite:///{folder / 'l.db'}")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FUZZ_ANTHROPIC_KEY", "sk-ant-fuzz")
        with BackgroundGateway(config) as running:
            running.forwarded = 0  # calls answered with a status the gateway does not refuse on its own
            yield running
    stub.stop()


def _exchange(gateway, data: bytes, quiet_s: float = 15) -> bytes:
    """What the gateway sends until it closes, or until it has been quiet for ``quiet_s`` (a kept-alive
    connection, or a request the gateway still waits the rest of)."""
    host, port = gateway.url.removeprefix("http://").removesuffix("/v1").split(":")
    with socket.create_connection((host, int(port)), timeout=quiet_s) as conn:
        conn.sendall(data)
        received = b""
        try:
            while chunk := conn.recv(65536):
                received += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return received


def _status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:80]  # never a silent close or a crash
    return int(answer[9:12])


def _recorded(gateway) -> int:
    recorder = gateway.gateway.recorder
    deadline = time.monotonic() + 10
    while recorder.pending or recorder.written + recorder.journaled < recorder.received:
        assert time.monotonic() < deadline, "the recorder did not catch up"
        time.sleep(0.02)
    return sum(LogStore(recorder.store.url).workloads().values())


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=chat_bodies, workload=workload_headers)
def test_odd_chat_bodies_are_answered_and_every_accepted_call_is_recorded(gateway, body, workload):
    _post_and_check(gateway, "/v1/chat/completions", body, workload)


content = st.text(max_size=40) | st.none() | st.integers() | st.lists(
    st.fixed_dictionaries({"type": st.sampled_from(["text", "input_text", "image", ""]), "text": json_values}),
    max_size=2)
tools = st.lists(json_values | st.fixed_dictionaries(
    {"type": st.sampled_from(["function", "web_search", ""]), "name": json_values, "parameters": json_values,
     "input_schema": json_values, "function": json_values}), max_size=3)
responses_bodies = st.fixed_dictionaries(
    {"model": st.sampled_from(["stub-model", ""]) | st.integers() | st.none(),
     "input": st.text(max_size=40) | st.lists(st.fixed_dictionaries({"role": st.text(max_size=8), "content": content})
                                              | json_values, max_size=3) | json_values},
    optional={"instructions": json_values, "stream": st.booleans(), "tools": tools, "tool_choice": json_values,
              "text": json_values, "max_output_tokens": json_values})
messages_bodies = st.fixed_dictionaries(
    {"model": st.sampled_from(["claude-x", ""]) | st.none(), "max_tokens": json_values,
     "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", ""]),
                                                 "content": content}) | json_values, max_size=3)},
    optional={"system": content, "stream": st.booleans(), "tools": tools, "tool_choice": json_values,
              "metadata": json_values})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=responses_bodies | messages_bodies, workload=workload_headers)
def test_odd_responses_and_messages_bodies_are_answered_and_every_accepted_call_is_recorded(gateway, body,
                                                                                           workload):
    _post_and_check(gateway, "/v1/messages" if "messages" in body else "/v1/responses", body, workload)


def _post_and_check(gateway, path: str, body: dict, workload: str | None) -> None:
    """The gateway answers 400 with its protocol's error object (OpenAI's or Anthropic's, both with ``error.type``),
    or forwards the call and gets the stub's 200; every forwarded call is recorded."""
    data = json.dumps(body).encode()
    head = [f"POST {path} HTTP/1.1", "Host: x", "Connection: close", f"Content-Length: {len(data)}"]
    if workload is not None:
        head.append(f"X-Distillery-Workload: {workload}")
    answer = _exchange(gateway, ("\r\n".join(head) + "\r\n\r\n").encode("utf-8") + data)
    status = _status(answer)
    error = json.loads(answer.split(b"\r\n\r\n", 1)[1]).get("error") if status >= 400 else None
    if status == 400:
        assert error["type"] == "invalid_request_error" and error["message"]
    else:
        assert status == 200, answer[:300]
        gateway.forwarded += 1
    assert _recorded(gateway) == gateway.forwarded


raw_heads = st.builds(
    lambda method, path, version, headers: f"{method} {path} {version}\r\n{headers}\r\n".encode("utf-8", "replace"),
    st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "BREW", "", "P O S T"]),
    st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/models", "/healthz", "/", "*", "//..//",
                     "/v1/chat/completions?x=1", "http://elsewhere/v1/chat/completions"]) | st.text(max_size=30),
    st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/9.9", "", "http/1.1"]),
    st.lists(st.sampled_from(["Host: x", "Content-Length: 5", "Content-Length: -1", "Content-Length: abc",
                              "Content-Length: 99999999999", "Transfer-Encoding: chunked", "Transfer-Encoding: gzip",
                              "Connection: close", "Expect: 100-continue", "Expect: nonsense", "X-Distillery-Workload: a",
                              ": no-name", "No-Colon", "Host: y", "Authorization: Bearer a", "Authorization: Bearer b",
                              "Upgrade: h2c", "Connection: Upgrade"]), max_size=6).map(
        lambda lines: "".join(f"{line}\r\n" for line in lines)),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(head=raw_heads, body=st.binary(max_size=64))
def test_malformed_requests_get_a_status_and_the_gateway_keeps_serving(gateway, head, body):
    answer = _exchange(gateway, head + body, quiet_s=0.5)
    if answer:  # none yet: the request is incomplete and the gateway waits for the rest (head_timeout_s bounds it)
        status = _status(answer)
        assert status < 500 or status in (502, 503, 504), answer[:300]
        if status == 200 and b"/completions" in head.split(b"\r\n", 1)[0]:
            gateway.forwarded += 1
    healthz = _exchange(gateway, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert _status(healthz) == 200
    assert _recorded(gateway) >= gateway.forwarded
