"""Grounded decoding: copied fields are substrings of the request's user text, in the engine, the model server and the
gateway; the tiny random model stands in for a model that would invent values."""

import json
import time

import llguidance
import openai
import pytest
from support.stub_provider import StubUpstream

from distillery.gateway import BackgroundGateway, GatewayConfig
from distillery.grounding import copy_chunks, grounded_grammar, message_text, uncopied_values, unsupported_values
from distillery.monitoring import live_report
from distillery.pricing import Price
from distillery.routing import SHADOW, Route, RouteStore
from distillery.serving import ModelServer, OpenAIServer, generate
from distillery.serving.engine import _grammar_tokenizer
from distillery.store import LogStore
from distillery.tasks import COMPACT_JSON, DecodingPolicy, parse_record

SCHEMA = {"type": "object", "properties": {"from_location": {"type": "string"}, "to_location": {"type": "string"},
                                           "group_size": {"type": "integer"}}, "additionalProperties": False}
COPIED = ("from_location", "to_location")
# The random model writes digits without end where a number may stand: the decoding tests hold strings only.
STRINGS = {"type": "object", "properties": {key: SCHEMA["properties"][key] for key in COPIED},
           "additionalProperties": False}
GROUNDED = DecodingPolicy.for_task("extraction", json_schema=SCHEMA, copied_fields=COPIED)
UNGROUNDED = DecodingPolicy.for_task("extraction", json_schema=SCHEMA)
TEXTS = ["I am leaving from Washington on the 11th.", "Two of us go to New York, from \"Old\" Boston\\North.",
         "Find me a bus to Fresno for 3 people", "Leaving Anaheim, CA.", "to San Diego please", "From LA to SF"]
CONVERSATIONS = [[{"role": "system", "content": "Extract the bus slots as JSON."}, {"role": "user", "content": text}]
                 for text in TEXTS]


def _accepts(tokenizer, grammar: str, answer: str) -> bool:
    matcher = llguidance.LLMatcher(_grammar_tokenizer(tokenizer), llguidance.grammar_from("lark", grammar))
    tokens = tokenizer(answer, add_special_tokens=False)["input_ids"]
    return matcher.try_consume_tokens(tokens) == len(tokens) and matcher.is_accepting()


def test_the_grammar_admits_copies_of_whole_words_in_schema_order_and_nothing_else(tiny_model_dir):
    from distillery.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    text = TEXTS[1]
    grammar = grounded_grammar(SCHEMA, COPIED, text)
    for answer in ['{"from_location":"\\"Old\\" Boston\\\\North","to_location":"New York","group_size":2}',
                   '{"to_location":"New York"}', '{}', '{"group_size":12}']:
        assert _accepts(tokenizer, grammar, answer), answer
        assert uncopied_values(json.loads(answer), COPIED, text) == []
    for answer in ['{"to_location":"New Yor"}',  # not a whole word
                   '{"to_location":"Paris"}',  # invented
                   '{"to_location":"New York","from_location":"Boston"}',  # keys out of schema order
                   '{"to_location":"New York","airline":"x"}',  # a field the schema does not have
                   '{"group_size":"two"}',  # a number keeps its schema
                   '{"to_location":" New York"}', '{"to_location":"New York, "}']:  # begins or ends on a blank
        assert not _accepts(tokenizer, grammar, answer), answer
    assert uncopied_values({"to_location": "New Yor"}, COPIED, text) == ["New Yor"]
    assert uncopied_values({"to_location": " New York"}, COPIED, text) == [" New York"]
    assert copy_chunks('a "b"') == ["a", " ", '\\"', "b", '\\"']


def test_a_copied_field_that_is_not_a_plain_string_is_refused_naming_it():
    with pytest.raises(ValueError, match="copied field 'group_size' is not a string"):
        DecodingPolicy.for_task("extraction", json_schema=SCHEMA, copied_fields=["group_size"])
    with pytest.raises(ValueError, match="copied field 'kind' is not a string"):
        DecodingPolicy.for_task("extraction", json_schema={"type": "object", "properties": {
            "kind": {"type": "string", "enum": ["a", "b"]}}}, copied_fields=["kind"])
    with pytest.raises(ValueError, match="need the workload's JSON schema"):
        DecodingPolicy.for_task("extraction", copied_fields=["city"])


def test_the_policy_travels_with_its_copied_fields_and_sends_each_request_its_own_grammar(tmp_path):
    GROUNDED.save(tmp_path)
    assert DecodingPolicy.load(tmp_path) == GROUNDED
    assert DecodingPolicy.from_structured_outputs(GROUNDED.record()) == GROUNDED
    sent = GROUNDED.structured_outputs(CONVERSATIONS[0])
    assert set(sent) == {"grammar"} and "Washington" in sent["grammar"]
    assert "copied" not in GROUNDED.structured_outputs()  # without a request: the schema, nothing a server rejects
    assert GROUNDED.valid_answer('{"from_location":"Washington"}', CONVERSATIONS[0])
    assert not GROUNDED.valid_answer('{"from_location":"Paris"}', CONVERSATIONS[0])
    assert UNGROUNDED.valid_answer('{"from_location":"Paris"}', CONVERSATIONS[0])


def test_grounded_decoding_never_invents_a_value_where_the_schema_alone_does(tiny_model_dir):
    from distillery.serving import load_model

    model, tokenizer = load_model(tiny_model_dir)
    schema = {**STRINGS, "required": ["to_location"]}  # one string at least
    grounded = generate(model, tokenizer, CONVERSATIONS, max_new_tokens=48,
                        policy=DecodingPolicy.for_task("extraction", json_schema=schema, copied_fields=COPIED))
    free = generate(model, tokenizer, CONVERSATIONS, max_new_tokens=48, policy=DecodingPolicy(
        json_object=True, json_schema=json.dumps(schema), whitespace_pattern=COMPACT_JSON))
    for generation, text in zip(grounded, TEXTS):
        assert generation.finish_reason == "stop" and generation.note is None
        assert uncopied_values(json.loads(generation.text), COPIED, text) == [], generation.text
    # The random model under the schema alone writes strings of its own (or runs out of tokens inside one).
    invented = [g.text for g, text in zip(free, TEXTS)
                if g.finish_reason == "length" or uncopied_values(json.loads(g.text), COPIED, text)]
    assert len(invented) >= len(TEXTS) // 2, [g.text for g in free]


def test_without_user_text_the_schema_alone_decodes_and_the_answer_says_so(tiny_model_dir):
    from distillery.serving import load_model

    model, tokenizer = load_model(tiny_model_dir)
    [answer] = generate(model, tokenizer, [[{"role": "system", "content": "Extract the bus slots."}]],
                        max_new_tokens=24, policy=GROUNDED)
    assert answer.note.startswith("not grounded: the request has no user text")
    grammar, note = GROUNDED.request_grammar([{"role": "system", "content": "x"}])
    assert grammar is None and note == answer.note


@pytest.fixture(scope="module")
def small_model(tiny_model_dir):
    served = ModelServer(tiny_model_dir, {})
    http = OpenAIServer(("127.0.0.1", 0), served.chat, served.models)
    http.start_in_thread()
    yield http
    http.shutdown()


def test_the_model_server_decodes_a_requests_grammar_and_refuses_a_broken_one(small_model):
    client = openai.OpenAI(base_url=small_model.url, api_key="x", max_retries=0)
    answer = client.chat.completions.create(model="base", messages=CONVERSATIONS[2], max_tokens=48,
                                            extra_body={"structured_outputs": GROUNDED.structured_outputs(
                                                CONVERSATIONS[2])}).choices[0].message.content
    assert uncopied_values(json.loads(answer), COPIED, TEXTS[2]) == []
    with pytest.raises(openai.BadRequestError, match="the grammar is not valid llguidance Lark"):
        client.chat.completions.create(model="base", messages=CONVERSATIONS[2], max_tokens=8,
                                       extra_body={"structured_outputs": {"grammar": "start: foo("}})
    assert client.chat.completions.create(model="base", messages=CONVERSATIONS[0], max_tokens=4).choices


def _shadow_rows(tmp_path, small_model, policy: DecodingPolicy, name: str):
    """Every conversation through a gateway whose route shadows the model server under ``policy``."""
    frontier = StubUpstream(answer='{"from_location":"Washington"}').start()
    logs = LogStore(f"sqlite:///{tmp_path}/{name}.db")
    logs.upgrade()
    RouteStore(logs.engine).set(Route("bus", SHADOW, 0.0, small_model.url, "base", policy), "test")
    config = GatewayConfig.single(frontier.url, models={"gpt-x": Price(1.0, 4.0)}, port=0, require_api_key=False,
                                  journal_path=tmp_path / f"{name}.jsonl", log_store_url=logs.url,
                                  route_refresh_s=0.05)
    try:
        with BackgroundGateway(config) as gateway:
            client = openai.OpenAI(base_url=gateway.url, api_key="unused", max_retries=0,
                                   default_headers={"X-Distillery-Workload": "bus"})
            for messages in CONVERSATIONS + [[{"role": "system", "content": "Extract the bus slots."}]]:
                client.chat.completions.create(model="gpt-x", messages=messages, max_tokens=48)
            deadline = time.monotonic() + 30
            while len(rows := logs.read("bus")) < 2 * (len(CONVERSATIONS) + 1):
                assert time.monotonic() < deadline, f"{len(rows)} rows stored"
                time.sleep(0.05)
    finally:
        frontier.stop()
    return rows


def test_live_the_hallucination_monitor_finds_no_unsupported_value_on_a_grounded_route(tmp_path, small_model):
    schema = json.dumps({**STRINGS, "required": ["to_location"]})  # one string at least, no blanks to spend tokens on
    invented = {}
    for name, policy in (("grounded", DecodingPolicy(json_object=True, json_schema=schema, copied_fields=COPIED,
                                                     whitespace_pattern=COMPACT_JSON)),
                         ("schema-only", DecodingPolicy(json_object=True, json_schema=schema,
                                                        whitespace_pattern=COMPACT_JSON))):
        rows = _shadow_rows(tmp_path, small_model, policy, name)
        shadow = rows[rows["served_by"] == "shadow"]
        with_user_text = shadow[["distillery_grounding" not in p for p in shadow["request_params"]]]
        # an answer that does not parse (a string the random model never closed) or holds a value not in the prompt
        invented[name] = sum(parse_record(answer) is None
                             or unsupported_values(parse_record(answer), message_text(messages))[0] > 0
                             for messages, answer in zip(with_user_text["request_messages"],
                                                         with_user_text["response_text"]))
        if name == "grounded":
            report = live_report(rows, "bus", train_prompts=CONVERSATIONS * 4, train_answers=["{}"] * 24,
                                 since_log_id=0, task="extraction", small_usd_per_request=0.0, min_rows=1)
            assert report.hallucination.unsupported_value_share == 0.0
            assert len(with_user_text) == len(CONVERSATIONS)
            assert all(p["valid_answer"] for p in with_user_text["request_params"])
            # the call without user text: decoded under the schema alone, and its row says so
            [note] = [p["distillery_grounding"] for p in shadow["request_params"] if "distillery_grounding" in p]
            assert note.startswith("not grounded: the request has no user text")
    assert invented["grounded"] == 0
    assert invented["schema-only"] >= len(CONVERSATIONS) // 2, invented  # the same random model, free to write
