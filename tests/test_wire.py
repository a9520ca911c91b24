"""The OpenAI shapes of distillery.wire, validated against the openai package's own published types."""

import openai.types
import openai.types.chat
import pytest

from distillery import wire


def test_a_chat_completion_is_an_openai_chat_completion():
    answer = openai.types.chat.ChatCompletion.model_validate(wire.chat_completion("billing", "m", 12, 1, "length"))
    assert (answer.choices[0].message.content, answer.choices[0].finish_reason) == ("billing", "length")
    assert answer.usage.total_tokens == 13 and answer.id.startswith("chatcmpl-")
    assert wire.answer_of(wire.chat_completion("billing", "m", 12, 1)) == ("billing", "stop")


def test_a_text_completion_is_an_openai_completion():
    answer = openai.types.Completion.model_validate(wire.text_completion("ok", "m", 3, 1))
    assert answer.choices[0].text == "ok" and wire.answer_of(answer.model_dump()) == ("ok", "stop")


def test_stream_chunks_are_openai_chunks_and_read_back_whole_whatever_the_boundaries():
    chunks = wire.chat_chunks(["bil", "ling"], "m", 12, 2)
    for chunk in chunks:
        openai.types.chat.ChatCompletionChunk.model_validate(chunk)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 2
    stream = b"".join(map(wire.sse_event, chunks)) + wire.SSE_DONE
    reader = wire.StreamReader()
    for start in range(0, len(stream), 7):  # events split at arbitrary places, as TCP delivers them
        reader.feed(stream[start : start + 7])
    assert (reader.text, reader.finish_reason, reader.model, reader.done) == ("billing", "stop", "m", True)
    assert reader.usage == {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}
    assert "usage" not in wire.chat_chunks(["x"], "m", 1, 1, usage_chunk=False)[-1]


def test_a_stream_reader_skips_what_is_not_a_chunk():
    reader = wire.StreamReader()
    reader.feed(b'data: not json\n\ndata: [1, 2]\n\ndata: {"choices": 5}\n\ndata: {"choices": [{"delta": 3}]}\n\n'
                b'data: {"choices": [{"delta": {"content": "ok"}}]}\n\n')
    assert reader.text == "ok" and not reader.done


def test_errors_are_what_the_openai_client_reads():
    body = wire.error("model fell over", "server_error")
    assert body["error"] == {"message": "model fell over", "type": "server_error", "param": None,
                             "code": "server_error"}
    assert wire.error_message(wire.error_bytes("no", "x")) == "no" and wire.error_message(b"<html>") is None


def test_a_model_list_holds_openai_models():
    listing = wire.model_list(["a", "b"], "distillery")
    assert [openai.types.Model.model_validate(m).id for m in listing["data"]] == ["a", "b"]


@pytest.mark.parametrize("body", [{}, {"messages": []}, {"messages": [{"role": "user"}]},
                                  {"messages": [{"role": "user", "content": [{"type": "text"}]}]}])
def test_chat_messages_the_local_server_cannot_answer_are_refused(body):
    with pytest.raises(wire.WireError):
        wire.chat_messages(body)


def test_what_is_not_a_completion_is_a_wire_error():
    for payload in ([], {"choices": []}, {"choices": ["x"]}, None):
        with pytest.raises(wire.WireError):
            wire.answer_of(payload)
