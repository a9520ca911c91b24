import json
import urllib.error
import urllib.request

import openai
import pytest

from distillery.demo import QUEUES, STANDIN_MODEL, demo_messages, generate_tickets, route_ticket, start_frontier_standin


@pytest.fixture
def standin():
    server = start_frontier_standin()
    yield server
    server.shutdown()


def test_tickets_are_varied_seeded_and_cover_every_queue():
    tickets = generate_tickets(400)
    assert tickets == generate_tickets(400)
    assert len(set(tickets)) > 350
    assert {route_ticket(t) for t in tickets} == set(QUEUES)


def test_routing_rules():
    assert route_ticket("I was charged twice for my plan") == "billing"
    assert route_ticket("My password reset link was a phishing email") == "security"  # security outranks account
    assert route_ticket("Nice weather today") == "feedback"


def test_standin_answers_through_the_openai_client(standin):
    client = openai.OpenAI(base_url=standin.url, api_key="x", max_retries=0)
    response = client.chat.completions.create(model=STANDIN_MODEL, messages=demo_messages("My parcel never came"))
    assert response.choices[0].message.content == "shipping"
    assert response.model == STANDIN_MODEL
    assert response.usage.prompt_tokens > 0 and response.usage.completion_tokens == 1
    assert [m.id for m in client.models.list()][0] == STANDIN_MODEL


def test_standin_streams(standin):
    client = openai.OpenAI(base_url=standin.url, api_key="x", max_retries=0)
    chunks = list(client.chat.completions.create(model=STANDIN_MODEL, stream=True,
                                                 messages=demo_messages("I can't log in")))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "account"


def test_malformed_requests_get_openai_style_errors(standin):
    def post(body: bytes) -> tuple[int, dict]:
        request = urllib.request.Request(f"{standin.url}/chat/completions", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    status, body = post(b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    status, body = post(json.dumps({"messages": []}).encode())
    assert status == 400 and "messages" in body["error"]["message"]
    status, _ = post(json.dumps({"messages": [{"role": "user", "content": "still up?"}]}).encode())
    assert status == 200
