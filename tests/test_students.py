"""The encoder students on the real bundled all-MiniLM-L6-v2: trained, saved, loaded, answering through the model
server with the openai client and as an MLflow model, with the confidences evaluation computes; candidate lists
checked before anything trains."""

import json
import random

import mlflow.pyfunc
import openai
import pytest
from support.tickets import TOPICS, tickets

from distillery.errors import DistilleryError
from distillery.grounding import uncopied_values, user_text
from distillery.models import BUNDLED_ENCODER, resolve_base_model
from distillery.serving import EncoderModelServer, EncoderStudent, OpenAIServer, save_adapter_model
from distillery.students import CLASSIFIER, SPAN_TAGGER, StudentCard
from distillery.tasks import (LABEL_PROBABILITY, LOWEST_TOKEN_PROBABILITY, SEQUENCE_PROBABILITY, DecodingPolicy,
                              confidence, parse_record)
from distillery.training.encoders import EncoderConfig, train_classifier, train_span_tagger
from distillery.training.students import Candidate, check_candidates, parse_candidates, span_tagger_ruled_out

CITIES = ["Paris", "Berlin", "New York", "Rome", "San Francisco"]
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "time": {"type": "string"}},
          "required": ["city"]}


def _bookings(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        city, time = rng.choice(CITIES), f"{rng.randint(5, 9)} pm"
        text = rng.choice([f"a table in {city} at {time} please", f"book {city} for {time}",
                           f"at {time} somewhere in {city}"])
        rows.append({"messages": [{"role": "user", "content": text},
                                  {"role": "assistant", "content": json.dumps({"city": city, "time": time},
                                                                              separators=(",", ":"))}]})
    return rows


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("classifier")
    result = train_classifier(tickets(96, 0), tickets(12, 1), resolve_base_model(BUNDLED_ENCODER),
                              list(TOPICS), folder, EncoderConfig(epochs=6, batch_size=16))
    assert result.steps == 36 and result.validation_loss is not None
    return folder


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tagger")
    train_span_tagger(_bookings(96, 0), _bookings(12, 1), resolve_base_model(BUNDLED_ENCODER), ("city", "time"),
                      SCHEMA, folder, EncoderConfig(epochs=8, batch_size=16, learning_rate=1e-3))
    return folder


def _served(student_dir, name: str):
    server = OpenAIServer(("127.0.0.1", 0), *_handlers(EncoderModelServer(str(StudentCard.load(student_dir).base_model),
                                                                           {name: student_dir})))
    server.start_in_thread()
    return server


def _post(server, route: str, body: dict) -> tuple[int, str | None]:
    """An admin route's status and, for an error, its code."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{server.url}/{route}", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())["error"]["code"]


def _handlers(model_server: EncoderModelServer):
    return (model_server.chat, model_server.models, {"/v1/load_lora_adapter": model_server.load_adapter,
                                                      "/v1/unload_lora_adapter": model_server.unload_adapter})


def test_a_classifier_answers_its_labels_with_the_same_confidence_in_evaluation_serving_and_mlflow(classifier_dir,
                                                                                                  tmp_path):
    student = EncoderStudent.load(classifier_dir)
    assert student.card.kind == CLASSIFIER and student.card.labels == tuple(TOPICS)
    held_out = tickets(30, 2)
    answers = student.answer([row["messages"][:-1] for row in held_out], batch_size=8)
    accuracy = sum(a.text == row["messages"][-1]["content"] for a, row in zip(answers, held_out)) / len(held_out)
    assert accuracy >= 0.8 and all(a.text in TOPICS for a in answers)  # 36 steps learn three keyword topics
    server = _served(classifier_dir, "triage-v1")
    try:
        client = openai.OpenAI(base_url=server.url, api_key="local", max_retries=0)
        for answer, row in zip(answers[:8], held_out):
            served = client.chat.completions.create(model="triage-v1", messages=row["messages"][:-1], logprobs=True)
            choice = served.choices[0]
            assert choice.message.content == answer.text
            logprobs = [entry.logprob for entry in choice.logprobs.content]
            assert confidence(LABEL_PROBABILITY, logprobs) == pytest.approx(answer.confidence(LABEL_PROBABILITY),
                                                                             abs=1e-4)
        with pytest.raises(openai.NotFoundError, match="not served here"):
            client.chat.completions.create(model="other", messages=held_out[0]["messages"][:-1])
        # A LoRA adapter (no student card) and a student of another base are refused; the server serves on.
        (tmp_path / "adapter").mkdir()
        (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
        assert _post(server, "load_lora_adapter", {"lora_name": "x", "lora_path": str(tmp_path / "adapter")}) == (
            400, "adapter_mismatch")
        other = tmp_path / "other-base"
        other.mkdir()
        StudentCard(CLASSIFIER, "/models/bert-large", 64, labels=("a",)).save(other)
        assert _post(server, "load_lora_adapter", {"lora_name": "y", "lora_path": str(other)}) == (400, "adapter_mismatch")
        assert _post(server, "unload_lora_adapter", {"lora_name": "nope"}) == (404, "model_not_found")
        assert _post(server, "load_lora_adapter", {"lora_name": "triage-v2", "lora_path": str(classifier_dir)})[0] == 200
        assert [m.id for m in client.models.list()] == ["triage-v1", "triage-v2"]
        assert client.chat.completions.create(model="triage-v2", messages=held_out[0]["messages"][:-1]).choices[
            0].message.content == answers[0].text
    finally:
        server.shutdown()
    model = save_adapter_model(classifier_dir, student.card.base_model, tmp_path / "mlflow-model")
    loaded = mlflow.pyfunc.load_model(str(model))
    assert loaded.predict([row["messages"][:-1] for row in held_out[:8]]) == [a.text for a in answers[:8]]


def test_a_span_tagger_answers_valid_json_whose_values_are_copies_of_the_users_words(tagger_dir):
    student = EncoderStudent.load(tagger_dir)
    assert student.card.kind == SPAN_TAGGER and student.card.tags == ("O", "B-city", "I-city", "B-time", "I-time")
    held_out = _bookings(30, 3)
    conversations = [row["messages"][:-1] for row in held_out]
    answers = student.answer(conversations, batch_size=8)
    policy = DecodingPolicy.for_task("extraction", json_schema=SCHEMA, copied_fields=("city", "time"))
    right = 0
    for answer, row, messages in zip(answers, held_out, conversations):
        record = parse_record(answer.text)
        assert record is not None and list(record) == [k for k in ("city", "time") if k in record]  # schema order
        assert not uncopied_values(record, ("city", "time"), user_text(messages))  # copies by construction
        right += record == parse_record(row["messages"][-1]["content"])
        assert len(answer.token_logprobs) == answer.completion_tokens  # one "token" a word
    assert right / len(held_out) >= 0.8
    assert all(policy.valid_answer(a.text, m) for a, m in zip(answers, conversations) if "city" in a.text)
    server = _served(tagger_dir, "bookings-v1")
    try:
        client = openai.OpenAI(base_url=server.url, api_key="local", max_retries=0)
        for answer, messages in zip(answers[:6], conversations):
            choice = client.chat.completions.create(model="bookings-v1", messages=messages, logprobs=True).choices[0]
            assert choice.message.content == answer.text
            logprobs = [entry.logprob for entry in choice.logprobs.content]
            for measure in (SEQUENCE_PROBABILITY, LOWEST_TOKEN_PROBABILITY):
                assert confidence(measure, logprobs) == pytest.approx(answer.confidence(measure), abs=1e-4)
    finally:
        server.shutdown()


def test_candidate_lists_are_checked_before_anything_trains():
    labels = DecodingPolicy(labels=tuple(TOPICS))
    with pytest.raises(DistilleryError, match=r"candidate 2 .*kind must be one of generative, classifier"):
        parse_candidates([{"kind": "generative"}, {"kind": "regression"}])
    with pytest.raises(DistilleryError, match="candidate 'classifier': unknown classifier setting.*warmup_steps"):
        check_candidates([Candidate(CLASSIFIER, BUNDLED_ENCODER, {"warmup_steps": 3})], "classification", labels)
    with pytest.raises(DistilleryError, match="candidate 'big': base model '/nowhere/model' cannot be loaded"):
        check_candidates([Candidate(CLASSIFIER, "/nowhere/model", name="big")], "classification", labels)
    with pytest.raises(DistilleryError, match="a classifier answers classification workloads"):
        check_candidates([Candidate(CLASSIFIER, BUNDLED_ENCODER)], "extraction", DecodingPolicy(json_object=True))
    with pytest.raises(DistilleryError, match="named twice"):
        check_candidates([Candidate(CLASSIFIER, BUNDLED_ENCODER), Candidate(CLASSIFIER, BUNDLED_ENCODER)],
                         "classification", labels)
    # A span tagger copies every field: a workload with a field its users' words do not hold does not get one.
    partly = DecodingPolicy.for_task("extraction", json_schema=SCHEMA, copied_fields=("city",))
    assert span_tagger_ruled_out("extraction", partly) == ("field 'time' is not copied from the user's text, so a "
                                                           "span tagger cannot answer it")
    usable, ruled_out = check_candidates([Candidate(SPAN_TAGGER, BUNDLED_ENCODER)], "extraction", partly)
    assert usable == [] and ruled_out == {SPAN_TAGGER: span_tagger_ruled_out("extraction", partly)}
    copied = DecodingPolicy.for_task("extraction", json_schema=SCHEMA, copied_fields=("city", "time"))
    assert check_candidates([Candidate(SPAN_TAGGER, BUNDLED_ENCODER)], "extraction", copied)[0]


def test_with_a_time_share_an_encoder_student_trains_until_the_share_ends_unless_it_names_its_epochs():
    from distillery.students import GENERATIVE
    from distillery.training.students import BUDGETED_ENCODER_EPOCHS, candidate_config

    tagger = Candidate(SPAN_TAGGER, BUNDLED_ENCODER)
    assert candidate_config(tagger, 0).epochs == EncoderConfig().epochs  # no budget: its epochs end it
    shared = candidate_config(tagger, 300)
    assert shared.max_seconds == 300 and shared.epochs == BUDGETED_ENCODER_EPOCHS
    assert candidate_config(Candidate(CLASSIFIER, BUNDLED_ENCODER, {"epochs": 2.0}), 300).epochs == 2.0
    generative = candidate_config(Candidate(GENERATIVE, "base"), 300, {"epochs": 4.0})
    assert generative.max_seconds == 300 and generative.epochs == 4.0  # the generative recipe decides its own
