"""The recorder's journal: what a crash, a row the store cannot take, a second gateway and a full segment do."""

import signal
import subprocess
import sys
import textwrap
import time

import orjson
import pytest

from distillery.capture import Recorder
from distillery.errors import DistilleryError
from distillery.store import LogStore


def _row(i: int, **values) -> dict:
    return {"uid": f"{i:032d}", "workload": "w", "created_at": "2026-12-02 01:00:00.000000+00:00",
            "endpoint": "chat.completions", "request_messages": [{"role": "user", "content": f"ticket {i}"}],
            "request_params": {}, "response_text": "ok", "status": "ok", **values}


@pytest.fixture
def store(tmp_path) -> LogStore:
    store = LogStore(f"sqlite:///{tmp_path / 'logs.db'}")
    store.upgrade()
    return store


def _wait(condition, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_rows_submitted_by_a_process_killed_before_its_writer_ran_are_stored_on_the_next_start(tmp_path, store):
    journal = tmp_path / "journal.jsonl"
    crashing = textwrap.dedent(f"""
        import os, signal
        from distillery.capture import Recorder
        from distillery.store import LogStore
        recorder = Recorder(LogStore({store.url!r}), {str(journal)!r})  # its writer never starts
        for i in range(300):
            recorder.submit({{"uid": f"{{i:032d}}", "workload": "w", "created_at": "2026-12-02 01:00:00+00:00",
                             "endpoint": "chat.completions", "request_messages": [], "request_params": {{}},
                             "response_text": "ok", "status": "ok"}})
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    killed = subprocess.run([sys.executable, "-c", crashing], capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    assert store.workloads() == {}
    recorder = Recorder(store, journal).start()  # the kernel released the dead process's lock
    _wait(lambda: recorder.recovered == 300)
    recorder.stop()
    assert store.workloads() == {"w": 300} and recorder.received == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["journal.jsonl.lock", "logs.db", "logs.db-shm",
                                                                 "logs.db-wal"]


def test_a_torn_last_line_is_dropped_and_the_rows_before_it_are_kept(tmp_path, store):
    journal = tmp_path / "journal.jsonl"
    lines = b"".join(orjson.dumps(_row(i)) + b"\n" for i in range(3))
    # a mapped segment as a dead process left it: complete rows, half a row, then the segment's zeros
    journal.write_bytes(lines + orjson.dumps(_row(3))[:40] + b"\0" * 4096)
    recorder = Recorder(store, journal).start()
    recorder.stop()
    assert len(store.read("w")) == 3 and recorder.recovered == 3 and recorder.rejected == 0


def test_a_row_the_store_cannot_take_is_set_aside_and_the_rows_behind_it_are_stored(tmp_path, log_store_url):
    store = LogStore(log_store_url)
    store.upgrade()
    journal = tmp_path / "journal.jsonl"
    recorder = Recorder(store, journal).start()
    for i in range(10):
        # 2**64 - 1 fits the journal's JSON but no SQLite or PostgreSQL integer
        recorder.submit(_row(i, prompt_tokens=2**64 - 1) if i == 4 else _row(i))
    _wait(lambda: recorder.pending == 0)
    recorder.stop()
    assert len(store.read("w")) == 9 and recorder.rejected == 1 and recorder.written == 9
    assert recorder.received == recorder.written + recorder.journaled + recorder.rejected
    [kept] = (tmp_path / "journal.jsonl.rejected").read_text().splitlines()
    assert orjson.loads(orjson.loads(kept)["line"])["uid"] == f"{4:032d}"
    assert any(word in orjson.loads(kept)["reason"] for word in ("OverflowError", "out of range"))


def test_a_second_recorder_on_a_journal_in_use_is_refused(tmp_path, store):
    first = Recorder(store, tmp_path / "journal.jsonl").start()
    with pytest.raises(DistilleryError, match="in use by another recorder"):
        Recorder(store, tmp_path / "journal.jsonl")
    first.stop()
    Recorder(store, tmp_path / "journal.jsonl").start().stop()  # free once the first has stopped


def test_full_segments_are_sealed_stored_and_deleted(tmp_path, store):
    recorder = Recorder(store, tmp_path / "journal.jsonl", segment_bytes=2048).start()
    for i in range(200):  # ~250 bytes a row: a new segment every few rows
        recorder.submit(_row(i))
    _wait(lambda: recorder.pending == 0)
    recorder.stop()
    assert len(store.read("w")) == 200 and recorder.written == 200
    assert not [path for path in tmp_path.iterdir() if path.name.startswith("journal.jsonl")
                and not path.name.endswith(".lock")]
