"""Recording off the request path, through a local journal that outlives the process.

``submit`` copies the row, as one JSON line, into the journal, a file mapped into memory, and returns: once it
has returned, a crash of the process cannot lose the row (the mapped pages are the file's page cache, which
outlives the process; only a power loss can take what is not yet on the disk, and the writer fsyncs the
journal at most ``flush_interval_s`` after a row). The gateway records a call's row before it sends the call's
answer, so a call whose caller got an answer is never lost.

A writer thread reads the journal behind the callers and inserts its rows into the log store in batches: at once
when the traffic pauses, else once ``batch_size`` rows wait or ``flush_interval_s`` has passed (big batches under
load cost the writer less CPU a row), and on ``stop``. The journal is written in segments of ``segment_bytes``; a
full segment is sealed into ``<journal>.replay-<n>`` and deleted once every row in it is stored, the last one on
``stop``. When the log store does not answer, the rows stay in the journal (counted as ``journaled``) and are
inserted once it answers again (``replayed``). Journal files left by a process that died are inserted on the
next start (``recovered``). Every row has a uid and an insert skips uids that are stored already, so a row read
twice (a crash between an insert and the deletion of its file) is stored once.

A batch the database refuses while it answers (a row it cannot store: a value too long for its column, say) is
inserted row by row; the rows it refuses are kept in ``<journal>.rejected`` with the database's reason, counted
as ``rejected``, and never block the rows behind them. So is a line a crash tore in half.

One process writes a journal at a time: a second recorder on the same path is refused with a clear error (an
exclusive lock on ``<journal>.lock``, which the kernel releases when its holder dies).

Accounting, at every moment: received = written + journaled + rejected + pending (rows in the journal not yet
read), and after ``stop()`` pending is 0. Over time ``replayed`` catches up with ``journaled``.

Why a mapped journal read back, and not a queue in memory or a ``write`` per row (benchmarks/gateway.py and
strace, 20,000 requests at 64 concurrent, 2026-12-02): with a ``queue.Queue`` handed row by row to the writer
thread the recorder cost the gateway ~80 µs of CPU a call, 14 µs of it the insert itself and the rest the queue's
lock and condition, the writer woken per row and the GIL handed back and forth (2.2 futex calls a call). A
``write`` per row costs ~2 µs but releases the GIL, and a waiting writer thread then takes it from the event loop.
A copy into the mapping is ~0.5 µs and keeps the GIL; the writer reads thousands of rows per wake-up.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import mmap
import os
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa

from distillery.errors import DistilleryError
from distillery.store import JSON_COLUMNS, LogStore

log = logging.getLogger(__name__)
_READ_BYTES = 4 << 20  # the most of a journal file read at once
_LOOK_S = 0.05  # how often the writer looks at the journal


class _Segment:
    """The journal file being written: mapped into memory, ``capacity`` bytes long, its rows from 0 to ``end``.
    ``fd`` is the writer thread's, to read and fsync it by."""

    def __init__(self, path: Path, capacity: int):
        self.path = path
        self.end = 0
        self.sealed_as: Path | None = None
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(self.fd, capacity)
        self._map = mmap.mmap(self.fd, capacity)

    def append(self, line: bytes) -> bool:
        """False when ``line`` does not fit."""
        end = self.end + len(line)
        if end > len(self._map):
            return False
        self._map[self.end:end] = line
        self.end = end  # after the copy: a reader never reads past a row still being copied
        return True

    def seal(self) -> None:
        """Cut the file to its rows and name it for the writer; it is not written any more."""
        self._map.close()
        os.truncate(self.path, self.end)
        self.sealed_as = self.path.with_name(f"{self.path.name}.replay-{time.time_ns()}")
        os.replace(self.path, self.sealed_as)


class _JournalFile:
    """One journal file as the writer reads it: up to byte ``stored`` its rows are in the store (or rejected); up
    to ``counted`` they were counted (as journaled while the store was down, where ``stored`` is behind)."""

    def __init__(self, path: Path, segment: _Segment | None = None):
        self.segment = segment  # None: a file left by a process that died, whose rows count as recovered
        self._path = path
        self.fd = segment.fd if segment else os.open(path, os.O_RDONLY)
        self.stored = 0
        self.counted = 0
        self.synced = 0

    @property
    def earlier(self) -> bool:
        return self.segment is None

    @property
    def path(self) -> Path:
        return self.segment.sealed_as or self.segment.path if self.segment else self._path

    @property
    def sealed(self) -> bool:
        return self.segment is None or self.segment.sealed_as is not None

    @property
    def size(self) -> int:
        return self.segment.end if self.segment else os.fstat(self.fd).st_size

    def lines(self, offset: int) -> list[bytes]:
        """The complete lines from ``offset`` on, at most ``_READ_BYTES`` of them."""
        data = os.pread(self.fd, min(_READ_BYTES, self.size - offset), offset)
        return data[: data.rfind(b"\n") + 1].splitlines(keepends=True)


class Recorder:
    def __init__(self, store: LogStore, journal_path: Path, *, batch_size: int = 2000, flush_interval_s: float = 1.0,
                 retry_interval_s: float = 1.0, segment_bytes: int = 16 << 20):
        self.store = store
        self.journal_path = Path(journal_path)
        self.journal_path.parent.mkdir(parents=True, exist_ok=True)
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.retry_interval_s = retry_interval_s
        self.segment_bytes = segment_bytes
        self.received = 0
        self.written = 0
        self.journaled = 0
        self.replayed = 0
        self.recovered = 0
        self.rejected = 0
        self.write_failures = 0
        self.database_up = True
        self._next_retry = 0.0
        self._lock = threading.Lock()  # submit() may be called from many threads (capture())
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="exchange-writer", daemon=True)
        self._holder = lock_journal(self.journal_path)
        if self.journal_path.exists():  # left by a process that died: its rows are inserted first
            _trim(self.journal_path)
            os.replace(self.journal_path, self.journal_path.with_name(
                f"{self.journal_path.name}.replay-{time.time_ns()}"))
        self._files = [_JournalFile(path) for path in
                       sorted(self.journal_path.parent.glob(self.journal_path.name + ".replay-*"))]
        self._segment = _Segment(self.journal_path, segment_bytes)
        self._files.append(_JournalFile(self.journal_path, self._segment))
        self._new_segments: list[_Segment] = []  # begun by submit(), not yet followed by the writer

    @property
    def pending(self) -> int:
        return self.received - self.written - self.journaled - self.rejected

    @property
    def journal_backlog(self) -> int:
        return self.journaled - self.replayed

    def start(self) -> "Recorder":
        self._thread.start()
        return self

    def submit(self, row: dict[str, Any]) -> None:
        """Called on the request path: the row is in the journal when this returns. No database work, no syscall
        but when a segment is full."""
        line = orjson.dumps(row, default=_journal_value, option=_JOURNAL_OPTIONS)
        with self._lock:
            if not self._segment.append(line):
                self._segment.seal()
                self._segment = _Segment(self.journal_path, max(self.segment_bytes, len(line)))
                self._new_segments.append(self._segment)
                self._segment.append(line)
            self.received += 1

    def stop(self, timeout_s: float = 30.0) -> None:
        """Store what the journal holds (what the store does not take stays there for the next start), stop the
        writer, and delete the journal if it is all stored. A recorder never started only closes its journal."""
        if self._stopping:
            return
        self._stopping = True
        if self._thread.is_alive():
            self._wake.set()
            self._thread.join(timeout_s)
        with self._lock:
            self._segment.seal()
        self._files += [_JournalFile(segment.path, segment) for segment in self._new_segments]
        for journal in self._files:
            if journal.stored == journal.size:
                journal.path.unlink()
            else:
                os.fsync(journal.fd)
            os.close(journal.fd)
        os.close(self._holder)

    # The writer thread

    def _run(self) -> None:
        last_drain, last_pending = time.monotonic(), 0
        while True:
            stopping = self._stopping
            pending = self.pending
            # Under load, rows wait for a full batch or flush_interval_s (the larger the batch, the less CPU a row);
            # when the traffic pauses or is light they are stored at the next look.
            if stopping or pending >= self.batch_size or pending == last_pending or \
                    time.monotonic() - last_drain >= self.flush_interval_s:
                try:
                    self._drain()
                except Exception:  # noqa: BLE001 - the writer must outlive any one failure; the rows stay journaled
                    log.exception("the exchange writer failed; the rows stay in the journal %s", self.journal_path)
                last_drain = time.monotonic()
            if stopping:
                return
            last_pending = self.pending
            self._wake.wait(_LOOK_S)

    def _drain(self) -> None:
        with self._lock:  # submit() sealed a full segment and began a new one
            new, self._new_segments = self._new_segments, []
        self._files += [_JournalFile(segment.path, segment) for segment in new]
        for journal in self._files:  # fsync batched: at most once per drain, never on the request path
            if journal.size > journal.synced:
                journal.synced = journal.size
                os.fsync(journal.fd)
        if not self.database_up and (time.monotonic() < self._next_retry or not self._probe_database()):
            return self._count_unstored()
        for journal in list(self._files):
            if not self._store(journal):
                return self._count_unstored()
            if journal.sealed and journal.stored == journal.size:
                os.close(journal.fd)
                journal.path.unlink()
                self._files.remove(journal)

    def _store(self, journal: _JournalFile) -> bool:
        """Insert what ``journal`` holds past ``stored``; False when the database is down."""
        while lines := journal.lines(journal.stored):
            for start in range(0, len(lines), self.batch_size):
                batch = lines[start : start + self.batch_size]
                refused = self._insert(batch)
                if refused is None:
                    return False
                self._count(journal, batch, refused)
        return True

    def _insert(self, lines: list[bytes]) -> dict[int, str] | None:
        """Store the rows of ``lines``: the ones the store cannot take (their positions, with why), or None when
        the database is down."""
        rows, refused = {}, {}
        for i, line in enumerate(lines):
            try:
                rows[i] = _decode(line)
            except ValueError as exc:  # a line a crash tore (orjson.JSONDecodeError is a ValueError)
                refused[i] = f"unreadable journal line: {exc}"
            if i % 256 == 255:
                time.sleep(0)  # lets the event loop have the GIL: it never waits for more than 256 lines (~0.5 ms)
        try:
            self.store.insert_rows(list(rows.values()))
        except Exception as exc:  # noqa: BLE001 - the database's errors, and a value its driver cannot bind
            if not self._probe_database(exc):
                return None
            # The database answers but refused the batch: find the rows it cannot take, store the rest.
            for i, row in rows.items():
                try:
                    self.store.insert_rows([row])
                except Exception as row_exc:  # noqa: BLE001 - as above
                    if not self._probe_database(row_exc):
                        return None
                    refused[i] = f"{type(row_exc).__name__}: {getattr(row_exc, 'orig', row_exc)}".splitlines()[0][:500]
        if refused:
            self._keep_rejected(lines, refused)
        return refused

    def _count(self, journal: _JournalFile, lines: list[bytes], refused: dict[int, str]) -> None:
        """Account for a stored batch of ``journal`` and move past it."""
        if journal.earlier:
            self.recovered += len(lines) - len(refused)
            journal.stored += sum(map(len, lines))
        elif not refused and journal.stored >= journal.counted:
            self.written += len(lines)
            journal.stored += sum(map(len, lines))
        else:
            for i, line in enumerate(lines):
                journaled_before = journal.stored < journal.counted
                if i in refused:
                    self.rejected += 1
                    self.journaled -= journaled_before
                elif journaled_before:
                    self.replayed += 1
                else:
                    self.written += 1
                journal.stored += len(line)
        journal.counted = max(journal.counted, journal.stored)

    def _count_unstored(self) -> None:
        """This process's rows that the store has not taken are journaled until it answers again."""
        for journal in self._files:
            while not journal.earlier and (lines := journal.lines(journal.counted)):
                self.journaled += len(lines)
                journal.counted += sum(map(len, lines))

    def _keep_rejected(self, lines: list[bytes], refused: dict[int, str]) -> None:
        """Rows the store cannot take go to ``<journal>.rejected`` with the reason, for a person to look at."""
        path = self.journal_path.with_name(self.journal_path.name + ".rejected")
        with open(path, "ab") as rejected:
            for i, reason in refused.items():
                rejected.write(orjson.dumps({"reason": reason, "line": lines[i].decode(errors="replace").rstrip()},
                                            option=orjson.OPT_APPEND_NEWLINE))
                log.error("the log store cannot take a journaled row (kept in %s): %s", path, reason)

    def _mark_down(self, exc: Exception) -> None:
        self.write_failures += 1
        if self.database_up:
            log.warning("log store unavailable, rows stay in the journal %s: %s", self.journal_path, exc)
        self.database_up = False
        self._next_retry = time.monotonic() + self.retry_interval_s

    def _probe_database(self, failure: Exception | None = None) -> bool:
        """Whether the log store answers; when not, it is marked down for ``failure`` (else the probe's error)."""
        try:
            with self.store.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError as exc:
            self._mark_down(failure or exc)
            return False
        if not self.database_up:
            log.warning("log store is back; storing the journal")
        self.database_up = True
        return True


def lock_journal(journal_path: Path) -> int:
    """An exclusive lock on the journal for its holder's life (a recorder; the parent of gateway workers on the journal
    their own journals stand beside); refused while another process holds it."""
    holder = os.open(journal_path.with_name(journal_path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(holder)
        raise DistilleryError(f"the journal {journal_path} is in use by another recorder (another gateway?): give "
                              "each gateway its own journal_path") from None
    return holder


def _trim(path: Path) -> None:
    """Cut a journal segment a process left behind to its rows: past them it is zeros, or a row the crash cut
    off, whose caller never got an answer."""
    data = path.read_bytes()
    os.truncate(path, data.rstrip(b"\0").rfind(b"\n") + 1)


_JOURNAL_OPTIONS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME


def _journal_value(value: Any) -> Any:
    """A datetime as ISO 8601 text with a space and microseconds, the form the log store keeps (UTC when naive);
    anything else JSON cannot hold as its text."""
    if isinstance(value, dt.datetime):
        value = value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
        return value.isoformat(" ", "microseconds")
    return str(value)


def _decode(line: bytes) -> dict[str, Any]:
    """A journal line as the log store's column values, its JSON columns as their JSON text.

    Why text at once: a batch of decoded rows waits for its insert, and nested lists and dicts that live that long
    are what Python's cyclic garbage collector scans again and again (a collection holds the GIL, so the event loop
    waits). Decoding 20,000 rows of tool calls (930-byte lines) cost 33-49 µs a row with their structure kept
    alive, 11-12 µs with the collector off (2026-12-02); as text, the structure is freed as soon as it is read.
    """
    row = orjson.loads(line)
    if not isinstance(row, dict):
        raise ValueError(f"a journal row is a JSON object, not {type(row).__name__}")
    created = row.get("created_at")
    if isinstance(created, dict):  # journals written before 2026-12 kept datetimes as {"__datetime__": iso}
        row["created_at"] = created.get("__datetime__")
    for name in JSON_COLUMNS:
        value = row.get(name)
        if value is not None:
            row[name] = orjson.dumps(value).decode()
    return row
