import datetime as dt
import json

import pandas as pd
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from distillery.capture import export_finetune_jsonl, import_logs
from distillery.gateway import KeyStore
from distillery.cli import app
from distillery.curation import infer_task
from distillery.routing import Evidence, RouteStore
from distillery.store import LogStore
from distillery.store.migrations import current_revision, upgrade
from distillery.tasks import EXTRACTION, DecodingPolicy


@pytest.fixture
def store(tmp_path):
    store = LogStore(f"sqlite:///{tmp_path / 'logs.db'}")
    store.upgrade()
    return store


def test_banking77_csv_imports_once_and_exports_as_finetuning_jsonl(store, tmp_path, banking77_train):
    result = import_logs(store, banking77_train, "banking77", "csv", prompt_field="text",
                         answer_field="category", system_prompt="Classify the banking query.")
    assert (result.read, result.imported, result.skipped) == (10003, 10003, [])
    again = import_logs(store, banking77_train, "banking77", "csv", prompt_field="text", answer_field="category")
    assert (again.imported, again.already_stored) == (0, 10003)
    first = store.read("banking77").iloc[0]
    assert first["request_messages"] == [{"role": "system", "content": "Classify the banking query."},
                                         {"role": "user", "content": "I am still waiting on my card?"}]
    assert first["response_text"] == "card_arrival"

    out = tmp_path / "export.jsonl"
    assert export_finetune_jsonl(store, "banking77", out) == 10003
    line = json.loads(out.read_text().splitlines()[0])
    assert line["messages"][-1] == {"role": "assistant", "content": "card_arrival"}


def test_finetune_jsonl_with_bad_lines_counts_and_skips_them(store, tmp_path):
    path = tmp_path / "train.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    no_answer = {"messages": [{"role": "user", "content": "hi"}]}
    path.write_text(json.dumps(good) + "\n{broken\n" + json.dumps(no_answer) + "\n" + json.dumps({"x": 1}) + "\n")
    result = import_logs(store, path, "chat", "finetune")
    assert (result.read, result.imported) == (4, 1)
    assert [s.split(":")[0] for s in result.skipped] == ["line 2", "line 3", "line 4"]


def test_batch_api_output_joined_with_its_input(store, tmp_path):
    requests = tmp_path / "in.jsonl"
    output = tmp_path / "out.jsonl"
    requests.write_text("\n".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                               "body": {"model": "gpt", "messages": [{"role": "user", "content": f"q{i}"}]}})
                                   for i in range(4)))
    ok = {"custom_id": "r0", "response": {"status_code": 200, "body": {
        "model": "gpt", "choices": [{"message": {"role": "assistant", "content": "a0"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1}}}, "error": None}
    failed = {"custom_id": "r1", "response": {"status_code": 500, "body": {"error": {"message": "boom"}}}, "error": None}
    call = {"id": "call_1", "type": "function", "function": {"name": "route", "arguments": '{"queue": "billing"}'}}
    tool_call = {"custom_id": "r2", "response": {"status_code": 200, "body": {"model": "gpt", "choices": [
        {"message": {"role": "assistant", "content": None, "tool_calls": [call]}, "finish_reason": "tool_calls"}]}},
        "error": None}
    refused = {"custom_id": "r3", "response": {"status_code": 200, "body": {"model": "gpt", "choices": [
        {"message": {"role": "assistant", "content": None, "refusal": "I can't help with that."},
         "finish_reason": "stop"}]}}, "error": None}
    output.write_text("\n".join(json.dumps(line) for line in (ok, failed, tool_call, refused)) + "\n")
    result = import_logs(store, output, "batch", "batch", requests_path=requests)
    assert result.imported == 4
    rows = store.read("batch")
    assert list(rows["status"]) == ["ok", "error", "ok", "ok"]
    assert rows.iloc[0]["request_messages"] == [{"role": "user", "content": "q0"}]
    assert rows.iloc[0]["response_text"] == "a0" and rows.iloc[0]["prompt_tokens"] == 5
    assert "boom" in rows.iloc[1]["error"]
    # Tool calls and refusals survive the import whole, as the other importers keep them.
    assert rows.iloc[2]["tool_calls"] == [call] and rows.iloc[2]["finish_reason"] == "tool_calls"
    assert rows.iloc[3]["refusal"] == "I can't help with that." and pd.isna(rows.iloc[3]["response_text"])


def test_csv_with_missing_columns_is_refused(store, tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="no column"):
        import_logs(store, path, "w", "csv", prompt_field="text", answer_field="label")


def test_rows_from_revision_0001_survive_the_upgrade_to_head(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(engine, "0001")
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO exchanges (workload, created_at, endpoint, request_messages, request_params, status) "
            "VALUES ('old', '2025-01-01 00:00:00', 'chat.completions', '[]', '{}', 'ok')"))
    store = LogStore(f"sqlite:///{tmp_path / 'old.db'}")
    store.upgrade()
    assert current_revision(store.engine) == "0010"
    old = store.read("old").iloc[0]
    assert store.workloads() == {"old": 1} and old["uid"] is None and old["served_by"] is None
    assert old["tool_calls"] is None and old["refusal"] is None  # 0007: an answer with neither
    assert len(store.read("old", frontier_only=True)) == 1  # rows from before routing were the frontier's


def test_routes_from_revision_0008_survive_the_upgrade_with_the_autopilot_off_and_no_evidence(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(engine, "0008")
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO routes (workload, mode, canary_percent, small_url, small_model, updated_at) "
                             "VALUES ('triage', 'canary', 10, 'http://127.0.0.1:9/v1', 'triage-v1', "
                             "'2026-12-01 00:00:00')"))
    store = LogStore(f"sqlite:///{tmp_path / 'old.db'}")
    store.upgrade()
    state = RouteStore(store.engine).state("triage")
    assert (state.route.label, state.route.autopilot, state.route.approval, state.route.epoch) == (
        "canary 10%", False, None, 0)
    assert state.evidence == Evidence() and state.since == dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)


def test_keys_from_revision_0004_get_their_default_workload_as_their_scope(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(engine, "0004")
    with engine.begin() as conn:
        for name, workload in (("tagged", "invoices"), ("plain", None)):
            conn.execute(sa.text("INSERT INTO api_keys (name, key_hash, default_workload, created_at) "
                                 "VALUES (:n, :h, :w, '2026-11-01 00:00:00')"), {"n": name, "h": name * 8, "w": workload})
    store = LogStore(f"sqlite:///{tmp_path / 'old.db'}")
    store.upgrade()
    keys = {key.name: key for key in KeyStore(store).list()}
    assert keys["tagged"].workloads == ("invoices",) and not keys["tagged"].all_workloads
    # A key without a default wrote to the default workload; that is all it may write to now.
    assert keys["plain"].workloads == ("default",) and not keys["plain"].may_write("invoices")


def test_routes_from_revision_0003_keep_their_answer_rule_as_a_decoding_policy(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(engine, "0003")
    with engine.begin() as conn:
        for workload, check in (("triage", '{"labels": ["billing", "shipping"]}'), ("invoices", '{"json": true}'),
                                ("notes", None)):
            conn.execute(sa.text("INSERT INTO routes (workload, mode, canary_percent, small_url, small_model, "
                                 "answer_check, updated_at) VALUES (:w, 'shadow', 0, 'http://x/v1', 'm', :c, "
                                 "'2026-11-01 00:00:00')"), {"w": workload, "c": check})
    store = LogStore(f"sqlite:///{tmp_path / 'old.db'}")
    store.upgrade()
    routes = RouteStore(store.engine)
    assert routes.get("triage").policy == DecodingPolicy(labels=("billing", "shipping"))
    assert routes.get("invoices").policy == DecodingPolicy(json_object=True)
    assert routes.get("notes").policy == DecodingPolicy()
    assert routes.get("triage").small_model_request == {"model": "m", "structured_outputs": {"choice": ["billing",
                                                                                                      "shipping"]}}


def test_cli_manages_keys_and_imports(distillery_home, tmp_path):
    runner = CliRunner()
    created = runner.invoke(app, ["keys", "create", "billing-app", "--workload", "invoices", "--workload", "refunds"])
    assert created.exit_code == 0 and created.stdout.strip().startswith("dst-")
    assert runner.invoke(app, ["keys", "create", "importer", "--all-workloads"]).exit_code == 0
    unscoped = runner.invoke(app, ["keys", "create", "loose"])
    assert unscoped.exit_code != 0 and "--workload NAME (repeatable) or --all-workloads" in unscoped.output
    listed = runner.invoke(app, ["keys", "list"])
    assert "billing-app\tscope=invoices, refunds\tactive" in listed.stdout
    assert "importer\tscope=all workloads\tactive" in listed.stdout and "loose" not in listed.stdout
    assert runner.invoke(app, ["keys", "revoke", "billing-app"]).exit_code == 0
    assert runner.invoke(app, ["keys", "revoke", "billing-app"]).exit_code == 1
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}))
    imported = runner.invoke(app, ["logs", "import", str(path), "--workload", "chat"])
    assert "imported 1" in imported.stdout


def test_dstc8_slot_spans_import_as_an_extraction_workload(store, shared_data):
    path = shared_data / "dstc8_spans" / "Buses_1" / "test.json"
    result = import_logs(store, path, "buses", "dstc8")
    assert (result.read, result.imported, result.skipped) == (377, 377, [])
    assert import_logs(store, path, "buses", "dstc8").already_stored == 377
    rows = store.read("buses")
    answers = {row.request_messages[-1]["content"]: json.loads(row.response_text) for row in rows.itertuples()}
    # The second record of the file: spans cut from the user's text.
    assert answers["The date is March 14th and the destination is Sacramento. The departure is from Las Vegas."] == {
        "from_location": "Las Vegas", "leaving_date": "March 14th", "to_location": "Sacramento"}
    assert answers["I need a bus for my planned trip."] == {}
    [second] = [row for row in rows.itertuples() if row.request_messages[-1]["content"].startswith("The date is")]
    system, asked, _ = second.request_messages
    # the slots in the order they first appear in train_0.json (the schema's order), the requested ones asked before
    assert system["content"] == "Extract the buses slots the user gives (to_location, leaving_date, from_location) as JSON."
    assert asked == {"role": "assistant", "content": "(asks for to_location, from_location, leaving_date)"}
    schema = second.request_params["response_format"]["json_schema"]["schema"]
    assert list(schema["properties"]) == ["to_location", "leaving_date", "from_location"]
    assert infer_task(rows["response_text"]) == EXTRACTION


def test_dstc8_records_without_ids_import_once_and_repeated_records_stay_separate(store, shared_data, tmp_path):
    records = json.loads((shared_data / "dstc8_spans" / "Buses_1" / "test.json").read_text())
    for record in records:
        del record["id"]
    path = tmp_path / "Buses_1" / "test.json"
    path.parent.mkdir()
    path.write_text(json.dumps(records + records[:1]))  # the first record twice: two callers, same text
    result = import_logs(store, path, "buses", "dstc8")
    assert (result.read, result.imported, result.skipped) == (len(records) + 1, len(records) + 1, [])
    again = import_logs(store, path, "buses", "dstc8")
    assert (again.imported, again.already_stored) == (0, len(records) + 1)


def test_bad_records_are_summarized_by_cause_and_strict_imports_nothing(distillery_home, tmp_path):
    path = tmp_path / "train.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    path.write_text("\n".join([json.dumps(good), *[json.dumps({"x": i}) for i in range(5)], "{broken"]) + "\n")
    runner = CliRunner()
    done = runner.invoke(app, ["logs", "import", str(path), "--workload", "chat"])
    assert done.exit_code == 0 and "read 7, imported 1" in done.stdout
    assert "skipped 5: KeyError: 'messages' (first: line 2, line 3, line 4)" in done.output
    assert done.output.count("skipped") == 3  # the totals line and one line per cause, not one per record
    other = tmp_path / "other.jsonl"
    other.write_text(path.read_text().replace("hello", "hi there"))
    strict = runner.invoke(app, ["logs", "import", str(other), "--workload", "chat", "--strict"])
    assert strict.exit_code == 1 and "6 of 7 records are bad, so nothing was imported (strict)" in strict.output
    assert LogStore().workloads() == {"chat": 1}


def test_openai_stored_chat_completions_and_a_generic_jsonl_mapping_import(store, tmp_path):
    stored = tmp_path / "stored.jsonl"
    request = {"model": "gpt-4o-mini", "temperature": 0, "messages": [{"role": "user", "content": "route: card lost"}]}
    answer = {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini-2024-07-18",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "lost_card"},
                           "finish_reason": "stop"}], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}
    failed = {"id": "chatcmpl-2", "status_code": 429, "error": {"message": "rate limited"}}
    stored.write_text("\n".join(json.dumps(r) for r in (
        {"request": request, "response": answer}, {"request": request, "response": failed}, {"request": request})))
    result = import_logs(store, stored, "stored", "openai-chat")
    assert (result.read, result.imported) == (3, 2) and result.by_cause()[0][0] == "KeyError: 'response'"
    rows = store.read("stored")
    ok = rows[rows["status"] == "ok"].iloc[0]
    assert ok["response_text"] == "lost_card" and ok["request_params"] == {"model": "gpt-4o-mini", "temperature": 0}
    assert ok["prompt_tokens"] == 9 and set(rows["status_code"]) == {200, 429}
    assert import_logs(store, stored, "stored", "openai-chat").imported == 0

    mapped = tmp_path / "mapped.jsonl"
    mapped.write_text("\n".join(json.dumps(r) for r in (
        {"input": {"text": "where is my card"}, "output": {"choices": [{"text": "card_arrival"}]}},
        {"input": {"text": "refund please"}, "output": {"choices": []}})) + "\n{broken\n")
    result = import_logs(store, mapped, "mapped", "jsonl", prompt_field="input.text",
                         answer_field="output.choices.0.text")
    assert (result.read, result.imported) == (3, 1)
    assert [cause for cause, _, _ in result.by_cause()] == ["missing field: no 'output.choices.0.text'",
                                                            "JSONDecodeError: Expecting property name enclosed in "
                                                            "double quotes"]
    assert store.read("mapped").iloc[0]["response_text"] == "card_arrival"


def test_imports_keep_tool_calls_and_the_export_gives_them_back(store, tmp_path):
    call = {"id": "call_1", "type": "function", "function": {"name": "route", "arguments": '{"queue": "cards"}'}}
    request = {"model": "gpt-4o-mini", "tools": [{"type": "function", "function": {"name": "route"}}],
               "messages": [{"role": "user", "content": "card lost"}]}
    answer = {"id": "chatcmpl-9", "object": "chat.completion", "model": "gpt-4o-mini",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                           "finish_reason": "tool_calls"}]}
    stored = tmp_path / "stored.jsonl"
    stored.write_text(json.dumps({"request": request, "response": answer}))
    finetune = tmp_path / "finetune.jsonl"
    finetune.write_text(json.dumps({"messages": [{"role": "user", "content": "card stolen"},
                                                 {"role": "assistant", "content": None, "tool_calls": [call]}]}))
    assert import_logs(store, stored, "calls", "openai-chat").imported == 1
    assert import_logs(store, finetune, "calls", "finetune").imported == 1
    rows = store.read("calls")
    assert [r["tool_calls"] for r in rows.to_dict("records")] == [[call], [call]]
    assert list(rows["finish_reason"]) == ["tool_calls", "tool_calls"] and rows["response_text"].isna().all()
    exported = tmp_path / "out.jsonl"
    assert export_finetune_jsonl(store, "calls", exported) == 2
    assert json.loads(exported.read_text().splitlines()[1])["messages"][-1]["tool_calls"] == [call]
