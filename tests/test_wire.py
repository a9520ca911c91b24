"""The OpenAI shapes of distillery.wire, validated against the openai package's own published types."""

import openai.types
import openai.types.chat
import pytest

from distillery import wire


def test_a_chat_completion_is_an_openai_chat_completion():
    answer = openai.types.chat.ChatCompletion.model_validate(wire.chat_completion("billing", "m", 12, 1, "length"))
    assert (answer.choices[0].message.content, answer.choices[0].finish_reason) == ("billing", "length")
    assert answer.usage.total_tokens == 13 and answer.id.startswith("chatcmpl-")
    read = wire.answer_of(wire.chat_completion("billing", "m", 12, 1))
    assert (read.text, read.finish_reason, read.tool_calls) == ("billing", "stop", None)


def test_a_text_completion_is_an_openai_completion():
    answer = openai.types.Completion.model_validate(wire.text_completion("ok", "m", 3, 1))
    assert answer.choices[0].text == "ok" and wire.answer_of(answer.model_dump()).text == "ok"


def test_stream_chunks_are_openai_chunks_and_read_back_whole_whatever_the_boundaries():
    chunks = wire.chat_chunks(["bil", "ling"], "m", 12, 2)
    for chunk in chunks:
        openai.types.chat.ChatCompletionChunk.model_validate(chunk)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 2
    stream = b"".join(map(wire.sse_event, chunks)) + wire.SSE_DONE
    reader = wire.StreamReader()
    for start in range(0, len(stream), 7):  # events split at arbitrary places, as TCP delivers them
        reader.feed(stream[start : start + 7])
    read = reader.answer
    assert (read.text, read.finish_reason, read.model, reader.done) == ("billing", "stop", "m", True)
    assert read.usage == {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}
    assert "usage" not in wire.chat_chunks(["x"], "m", 1, 1, usage_chunk=False)[-1]


def test_a_stream_reader_skips_what_is_not_a_chunk():
    reader = wire.StreamReader()
    reader.feed(b'data: not json\n\ndata: [1, 2]\n\ndata: {"choices": 5}\n\ndata: {"choices": [{"delta": 3}]}\n\n'
                b'data: {"choices": [{"delta": {"content": "ok"}}]}\n\n')
    assert reader.answer.text == "ok" and not reader.done


def test_errors_are_what_the_openai_client_reads():
    body = wire.error("model fell over", "server_error")
    assert body["error"] == {"message": "model fell over", "type": "server_error", "param": None,
                             "code": "server_error"}
    assert wire.error_message(wire.error_bytes("no", "x")) == "no" and wire.error_message(b"<html>") is None


def test_a_model_list_holds_openai_models():
    listing = wire.model_list([("a", "distillery"), ("b", "frontier")], created=1_700_000_000)
    models = [openai.types.Model.model_validate(m) for m in listing["data"]]
    assert [(m.id, m.owned_by, m.created) for m in models] == [("a", "distillery", 1_700_000_000),
                                                                ("b", "frontier", 1_700_000_000)]


@pytest.mark.parametrize("body", [{}, {"messages": []}, {"messages": [{"role": "user"}]},
                                  {"messages": [{"role": "user", "content": [{"type": "text"}]}]}])
def test_chat_messages_the_local_server_cannot_answer_are_refused(body):
    with pytest.raises(wire.WireError):
        wire.chat_messages(body)


def test_what_is_not_a_completion_is_a_wire_error():
    for payload in ([], {"choices": []}, {"choices": ["x"]}, None):
        with pytest.raises(wire.WireError):
            wire.answer_of(payload)


CALLS = [wire.tool_call("route_ticket", '{"queue": "billing"}'), wire.tool_call("escalate", '{"level": 2}')]


def test_tool_calls_are_openai_tool_calls_and_a_stream_of_them_is_put_back_together():
    completion = openai.types.chat.ChatCompletion.model_validate(
        wire.chat_completion(None, "m", 5, 9, "tool_calls", CALLS))
    assert [c.function.name for c in completion.choices[0].message.tool_calls] == ["route_ticket", "escalate"]
    assert wire.answer_of(completion.model_dump()).tool_calls[1]["function"]["arguments"] == '{"level": 2}'
    chunks = wire.chat_chunks([], "m", 5, 9, "tool_calls", tool_calls=CALLS)
    for chunk in chunks:
        openai.types.chat.ChatCompletionChunk.model_validate(chunk)
    stream = b"".join(map(wire.sse_event, chunks)) + wire.SSE_DONE
    reader = wire.StreamReader()
    for start in range(0, len(stream), 5):
        reader.feed(stream[start : start + 5])
    assert reader.answer.tool_calls == CALLS and reader.answer.finish_reason == "tool_calls"
    assert not reader.answer.text


def test_responses_api_shapes_are_the_openai_types_and_read_back():
    import pydantic
    from openai.types.responses import Response, ResponseStreamEvent

    from distillery.gateway.protocols import openai_responses as responses

    for text, calls in (("billing", None), (None, CALLS)):
        whole = responses.response(text, "m", 7, 3, calls, {"instructions": "route", "tools": []})
        parsed = Response.model_validate(whole)
        assert parsed.output_text == (text or "") and parsed.usage.output_tokens == 3
        read = responses.answer_of(whole)
        assert (read.text, read.finish_reason) == (text, "tool_calls" if calls else "stop")
        assert read.tool_calls == calls and read.usage == {"prompt_tokens": 7, "completion_tokens": 3}
        events = responses.stream_events(whole)
        adapter = pydantic.TypeAdapter(ResponseStreamEvent)
        for event in events:
            adapter.validate_python(event)
        reader = responses.ResponsesStreamReader()
        stream = wire.typed_sse_events(events)
        for start in range(0, len(stream), 11):
            reader.feed(stream[start : start + 11])
        assert reader.done and reader.answer == read
    assert responses.request_messages({"instructions": "route", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "my card"}]}]}) == [
        {"role": "system", "content": "route"}, {"role": "user", "content": "my card"}]


def test_anthropic_shapes_are_the_anthropic_types_and_read_back():
    import anthropic.types
    import pydantic

    from distillery.gateway.protocols import anthropic_messages as messages

    for text, calls in (("billing", None), (None, CALLS)):
        whole = messages.message(text, "claude", 7, 3, calls)
        parsed = anthropic.types.Message.model_validate(whole)
        assert parsed.stop_reason == ("tool_use" if calls else "end_turn")
        read = messages.answer_of(whole)
        assert read.text == text and read.finish_reason == ("tool_calls" if calls else "stop")
        assert [c["function"]["name"] for c in read.tool_calls or ()] == [c["function"]["name"] for c in calls or ()]
        events = messages.stream_events(whole)
        adapter = pydantic.TypeAdapter(anthropic.types.RawMessageStreamEvent)
        for event in events:
            adapter.validate_python(event)
        reader = messages.MessagesStreamReader()
        stream = wire.typed_sse_events(events)
        for start in range(0, len(stream), 13):
            reader.feed(stream[start : start + 13])
        assert reader.done and reader.answer.text == read.text and reader.answer.usage == read.usage
        assert [c["function"]["arguments"] for c in reader.answer.tool_calls or ()] == \
            [c["function"]["arguments"] for c in read.tool_calls or ()]
    assert messages.request_messages({"system": [{"type": "text", "text": "route"}], "messages": [
        {"role": "user", "content": [{"type": "text", "text": "my card"}]}]}) == [
        {"role": "system", "content": "route"}, {"role": "user", "content": "my card"}]
    assert anthropic.types.ErrorResponse.model_validate(messages.error("no", "invalid_api_key")).error.type == \
        "authentication_error"
