"""Recording off the request path: a bounded queue, a batching writer, and a local journal.

The request path only counts a row and puts it on a queue (``submit`` never blocks and
never touches the database). A writer thread drains the queue in batches into the log
store. When a batch cannot be written (the database is down, or the queue is full), the
rows are appended to an append-only JSONL journal and fsynced instead; once the database
answers again the writer replays the journal. Rows carry a uid and replays skip uids that
are stored already, so a replay interrupted by a crash and repeated inserts nothing twice.

Accounting, at every moment: received = written + journaled + pending (rows still queued),
and after ``stop()`` pending is 0. ``replayed`` counts journaled rows that reached the store.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from distillery.store import LogStore

log = logging.getLogger(__name__)
_STOP = object()


class Recorder:
    def __init__(self, store: LogStore, journal_path: Path, *, queue_size: int = 50_000, batch_size: int = 500,
                 flush_interval_s: float = 0.05, retry_interval_s: float = 1.0):
        self.store = store
        self.journal_path = Path(journal_path)
        self.journal_path.parent.mkdir(parents=True, exist_ok=True)
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.retry_interval_s = retry_interval_s
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._journal_lock = threading.Lock()
        self._count_lock = threading.Lock()  # submit() may be called from many threads (capture())
        self._thread = threading.Thread(target=self._run, name="exchange-writer", daemon=True)
        self.received = 0
        self.written = 0
        self.journaled = 0
        self.replayed = 0
        self.write_failures = 0
        self.database_up = True
        self._next_retry = 0.0
        # Known in memory so the writer loop does not stat the journal folder per batch;
        # files left by an earlier process count from the start.
        self._journal_pending = self.journal_path.exists() or bool(self._replay_files())

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    @property
    def journal_backlog(self) -> int:
        return self.journaled - self.replayed

    def start(self) -> "Recorder":
        self._thread.start()
        return self

    def submit(self, row: dict[str, Any]) -> None:
        """Called on the request path: O(1), no I/O unless the queue is full."""
        with self._count_lock:
            self.received += 1
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            self._journal([row])

    def stop(self, timeout_s: float = 30.0) -> None:
        """Flush everything queued (to the store, or else the journal) and stop the writer."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout_s)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch, stopping = self._next_batch()
            if batch:
                self._write(batch)
            if self.database_up and self._journal_pending:
                self._replay()
            elif not self.database_up and time.monotonic() >= self._next_retry:
                self._probe_database()
        # Final attempt to empty the journal before shutting down; what stays there is replayed next start.
        if self._journal_pending:
            self._probe_database()
            if self.database_up:
                self._replay()

    def _next_batch(self) -> tuple[list[dict], bool]:
        batch: list[dict] = []
        try:
            item = self._queue.get(timeout=self.flush_interval_s)
        except queue.Empty:
            return batch, False
        if item is _STOP:
            return batch, True
        batch.append(item)
        while len(batch) < self.batch_size:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _write(self, batch: list[dict]) -> None:
        if self.database_up:
            try:
                self.store.insert_rows(batch)
                self.written += len(batch)
                return
            except sa.exc.SQLAlchemyError as exc:
                self._mark_down(exc)
        self._journal(batch)

    def _mark_down(self, exc: Exception) -> None:
        self.write_failures += 1
        if self.database_up:
            log.warning("log store unavailable, journaling rows to %s: %s", self.journal_path, exc)
        self.database_up = False
        self._next_retry = time.monotonic() + self.retry_interval_s

    def _probe_database(self) -> None:
        try:
            with self.store.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError as exc:
            self._mark_down(exc)
            return
        if not self.database_up:
            log.warning("log store is back; replaying the journal")
        self.database_up = True

    def _journal(self, rows: list[dict]) -> None:
        lines = "".join(json.dumps(row, default=_encode) + "\n" for row in rows)
        with self._journal_lock:
            with open(self.journal_path, "a", encoding="utf-8") as journal:
                journal.write(lines)
                journal.flush()
                os.fsync(journal.fileno())
            self.journaled += len(rows)
            self._journal_pending = True

    def _replay_files(self) -> list[Path]:
        return sorted(self.journal_path.parent.glob(self.journal_path.name + ".replay-*"))

    def _replay(self) -> None:
        with self._journal_lock:
            if self.journal_path.exists():
                os.replace(self.journal_path, self.journal_path.with_name(
                    f"{self.journal_path.name}.replay-{time.time_ns()}"))
            self._journal_pending = False  # rows journaled from now on set it again
        for path in self._replay_files():
            rows = [_decode(json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line]
            try:
                for start in range(0, len(rows), self.batch_size):
                    self.store.insert_rows(rows[start : start + self.batch_size])
            except sa.exc.SQLAlchemyError as exc:
                self._mark_down(exc)  # the file stays; the next replay starts it over, uids keep it exact
                self._journal_pending = True
                return
            path.unlink()
            self.replayed += len(rows)


def _encode(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return {"__datetime__": value.isoformat()}
    raise TypeError(f"cannot journal {type(value).__name__}")


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    created = row.get("created_at")
    if isinstance(created, dict) and "__datetime__" in created:
        row["created_at"] = dt.datetime.fromisoformat(created["__datetime__"])
    return row
