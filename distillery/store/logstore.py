"""The log store: every captured exchange between an application and a model.

SQLAlchemy 2 over SQLite by default (one file in the data directory) or any
SQLAlchemy URL. The schema is owned by Alembic migrations in
``distillery/store/migrations`` so a user's store survives upgrades; ``LogStore.upgrade``
brings any store to the current revision.
"""

from __future__ import annotations

import datetime as dt
import json
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import orjson
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from distillery.settings import default_log_store_url

STATUS_OK = "ok"
STATUS_ERROR = "error"


class Base(DeclarativeBase):
    pass


SERVED_BY_FRONTIER, SERVED_BY_SMALL, SERVED_BY_SHADOW = "frontier", "small", "shadow"
# The frontier's answer to a copy of a call a cascade's small model answered, off the caller's path (an audit).
SERVED_BY_AUDIT = "audit"

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class ExchangeRow(Base):
    __tablename__ = "exchanges"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    workload: Mapped[str] = mapped_column(sa.String(100))  # looked up through ix_exchanges_workload_id
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    endpoint: Mapped[str] = mapped_column(sa.String(40))
    request_messages: Mapped[list] = mapped_column(sa.JSON)
    request_params: Mapped[dict] = mapped_column(sa.JSON)
    model: Mapped[str | None] = mapped_column(sa.String(200))
    response_text: Mapped[str | None] = mapped_column(sa.Text)
    # The rest of the assistant's answer: its function calls as OpenAI's chat completions list them
    # ([{"id", "type": "function", "function": {"name", "arguments"}}], arguments as the provider sent them, whatever
    # the protocol), and a refusal. NULL when the answer had none.
    tool_calls: Mapped[list | None] = mapped_column(sa.JSON)
    refusal: Mapped[str | None] = mapped_column(sa.Text)
    # A cascade route's small-model confidence in its answer (distillery.tasks.confidence); NULL on other rows.
    confidence: Mapped[float | None] = mapped_column(sa.Float)
    finish_reason: Mapped[str | None] = mapped_column(sa.String(40))
    prompt_tokens: Mapped[int | None] = mapped_column(sa.Integer)
    completion_tokens: Mapped[int | None] = mapped_column(sa.Integer)
    latency_ms: Mapped[float | None] = mapped_column(sa.Float)
    status: Mapped[str] = mapped_column(sa.String(20))
    status_code: Mapped[int | None] = mapped_column(sa.Integer)
    error: Mapped[str | None] = mapped_column(sa.Text)
    uid: Mapped[str | None] = mapped_column(sa.String(32))
    upstream: Mapped[str | None] = mapped_column(sa.String(100))
    cost_usd: Mapped[float | None] = mapped_column(sa.Float)
    served_by: Mapped[str | None] = mapped_column(sa.String(20))  # frontier (or NULL), small, shadow

    __table_args__ = (
        sa.Index("ix_exchanges_workload_id", "workload", "id"),
        sa.UniqueConstraint("uid", name="uq_exchanges_uid"),
    )


class RouteRow(Base):
    __tablename__ = "routes"

    workload: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    mode: Mapped[str] = mapped_column(sa.String(20))
    canary_percent: Mapped[float] = mapped_column(sa.Float)
    small_url: Mapped[str | None] = mapped_column(sa.String(500))
    small_model: Mapped[str | None] = mapped_column(sa.String(200))
    small_api: Mapped[str] = mapped_column(sa.String(20), server_default="chat")  # distillery.wire.SMALL_MODEL_APIS
    decoding_policy: Mapped[dict | None] = mapped_column(sa.JSON)  # vLLM's structured_outputs; NULL: free text
    cascade: Mapped[dict | None] = mapped_column(sa.JSON)  # distillery.tasks.Cascade's record; NULL: no cascade
    updated_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))  # when the current stage began
    autopilot: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.false())
    approval: Mapped[dict | None] = mapped_column(sa.JSON)  # distillery.routing.Approval's record: what the gate approved
    epoch: Mapped[int] = mapped_column(sa.Integer, server_default="0")  # +1 on every change of the route
    # The current stage's sequential test, pooled over every gateway (distillery.routing.autopilot)
    evidence_calls: Mapped[int] = mapped_column(sa.Integer, server_default="0")
    evidence_agreed: Mapped[int] = mapped_column(sa.Integer, server_default="0")
    evidence_llr: Mapped[float] = mapped_column(sa.Float, server_default="0")


class RouteEventRow(Base):
    __tablename__ = "route_events"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    workload: Mapped[str] = mapped_column(sa.String(100), index=True)
    kind: Mapped[str] = mapped_column(sa.String(20))  # set (a person, the deploy), rollback, advance, autopilot (on/off)
    from_mode: Mapped[str | None] = mapped_column(sa.String(40))
    to_mode: Mapped[str] = mapped_column(sa.String(40))
    reason: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    evidence: Mapped[dict | None] = mapped_column(sa.JSON)  # an autopilot decision's: distillery.routing.Evidence


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(sa.String(100), unique=True)
    key_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    workloads: Mapped[list[str]] = mapped_column(sa.JSON)  # the workloads it may write to, the first its default
    all_workloads: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.false())  # trusted importers, admins
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))


@dataclass
class Exchange:
    """One request/response pair as captured; ``status`` is ``ok`` or ``error``."""

    workload: str
    request_messages: list[dict[str, Any]]
    response_text: str | None
    model: str | None = None
    request_params: dict[str, Any] = field(default_factory=dict)
    endpoint: str = "chat.completions"
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    status: str = STATUS_OK
    status_code: int | None = 200
    error: str | None = None
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))
    uid: str | None = None
    upstream: str | None = None
    cost_usd: float | None = None
    served_by: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    refusal: str | None = None
    confidence: float | None = None


COLUMNS = [c.name for c in ExchangeRow.__table__.columns]
_INSERTED_NAMES = [name for name in COLUMNS if name != "id"]
_INSERTED_VALUES = operator.itemgetter(*_INSERTED_NAMES)
JSON_COLUMNS = tuple(name for name in _INSERTED_NAMES
                     if isinstance(ExchangeRow.__table__.columns[name].type, sa.JSON))
_JSON_POSITIONS = [_INSERTED_NAMES.index(name) for name in JSON_COLUMNS]
# 128 rows x 20 columns stay well under SQLite's limit on a statement's variables (32,766 since 3.32)
_SQLITE_ROWS_PER_INSERT = 128
_FRONTIER_ANSWER = sa.or_(ExchangeRow.served_by.is_(None), ExchangeRow.served_by == SERVED_BY_FRONTIER)


class LogStore:
    def __init__(self, url: str | None = None):
        self.url = url or default_log_store_url()
        if self.url.startswith("sqlite:///"):
            Path(self.url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # orjson: JSON columns are most of the gateway writer's per-row work (json.dumps is ~4x slower).
        self.engine = sa.create_engine(self.url, pool_pre_ping=True,
                                       json_serializer=lambda value: orjson.dumps(value).decode())
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
            self._sqlite_statements: dict[int, str] = {}  # multi-row INSERTs by row count, built once

    def upgrade(self) -> None:
        """Create or migrate the schema to the newest revision (idempotent)."""
        from distillery.store.migrations import upgrade

        upgrade(self.engine)

    def record(self, exchanges: Iterable[Exchange]) -> int:
        return self.insert_rows([exchange_values(e) for e in exchanges])

    def insert_rows(self, rows: list[dict[str, Any]]) -> int:
        """Insert column dicts in one transaction; a row whose uid is already stored is skipped. ``created_at`` is a
        datetime or its ISO 8601 text (as the recorder's journal keeps it); a JSON column (request messages and
        params, tool calls: never a bare JSON string) is its value or that value's JSON text (as the recorder
        hands them over)."""
        if not rows:
            return 0
        dialect = self.engine.dialect.name
        if dialect == "sqlite":
            self._insert_sqlite(rows)
            return len(rows)
        if dialect == "postgresql" and self.engine.dialect.driver == "psycopg":
            self._insert_postgres(rows)
            return len(rows)
        rows = [{**row, "created_at": _datetime(row.get("created_at")),
                 **{name: json.loads(row[name]) for name in JSON_COLUMNS if isinstance(row.get(name), str)}}
                for row in rows]
        with self.engine.begin() as conn:
            conn.execute(sa.insert(ExchangeRow), rows)
        return len(rows)

    def _insert_sqlite(self, rows: list[dict[str, Any]]) -> None:
        """One multi-row INSERT per up to 128 rows, its values bound by sqlite3 in C (the JSON columns made text by
        orjson, datetimes by sqlite3's own adapter).

        Why not ``executemany``: it releases and takes back the GIL around every row's step, and on the gateway's
        writer thread each hand-over with the busy event loop cost more than the insert (benchmarks/gateway.py,
        2026-12-02: the writer cost the gateway 46 µs of CPU a row with executemany and the column types' bind
        processors, where SQLite's own work is ~8 µs a row). Here a row costs ~2 µs of Python, and each statement
        hands the GIL over once, so the event loop never waits more than one statement's binding (~0.3 ms).
        """
        with self.engine.begin() as conn:
            start = 0
            while start < len(rows):
                # 128, then the powers of two that make up the rest: few distinct statements to prepare and cache
                count = min(_SQLITE_ROWS_PER_INSERT, 1 << ((len(rows) - start).bit_length() - 1))
                conn.exec_driver_sql(self._sqlite_statement(count), _values(rows[start:start + count]))
                start += count

    def _sqlite_statement(self, count: int) -> str:
        statement = self._sqlite_statements.get(count)
        if statement is None:
            placeholders = "(" + ", ".join("?" for _ in _INSERTED_NAMES) + ")"
            statement = self._sqlite_statements[count] = (
                f"INSERT INTO exchanges ({', '.join(_INSERTED_NAMES)}) "
                f"VALUES {', '.join([placeholders] * count)} ON CONFLICT (uid) DO NOTHING")
        return statement

    def _insert_postgres(self, rows: list[dict[str, Any]]) -> None:
        """COPY into a temporary table (the server parses every value, JSON and timestamps included), then one
        INSERT ... SELECT that skips stored uids.

        Measured for 20,000 rows in batches of 2,000 (2026-12-02), CPU of the inserting process a row: 6.3 µs with
        COPY, 24 µs with ``executemany`` of a one-row INSERT, 90 µs with a 128-row INSERT (psycopg parses a
        statement that long in Python on every execute), and the Core insert the writer used before cost the gateway
        66 µs a row (benchmarks/gateway.py).
        """
        columns = ", ".join(_INSERTED_NAMES)
        values = _values(rows)
        width = len(_INSERTED_NAMES)
        with self.engine.begin() as conn:
            cursor = conn.connection.driver_connection.cursor()
            cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS exchanges_in ON COMMIT DELETE ROWS AS "
                           f"SELECT {columns} FROM exchanges WITH NO DATA")
            with cursor.copy(f"COPY exchanges_in ({columns}) FROM STDIN") as copy:
                for start in range(0, len(values), width):
                    copy.write_row(values[start:start + width])
            cursor.execute(f"INSERT INTO exchanges ({columns}) SELECT {columns} FROM exchanges_in "
                           "ON CONFLICT (uid) DO NOTHING")

    def workloads(self) -> dict[str, int]:
        """Every workload that has rows, with its row count."""
        query = sa.select(ExchangeRow.workload, sa.func.count()).group_by(ExchangeRow.workload)
        with self.engine.connect() as conn:
            return {name: count for name, count in conn.execute(query)}

    def frontier_rows_after(self, workload: str, log_id: int) -> int:
        """How many frontier answers the workload has logged after row ``log_id`` (new training data)."""
        query = (sa.select(sa.func.count()).where(ExchangeRow.workload == workload, ExchangeRow.id > log_id)
                 .where(_FRONTIER_ANSWER, ExchangeRow.status == STATUS_OK))
        with self.engine.connect() as conn:
            return conn.execute(query).scalar_one()

    def usage(self) -> pd.DataFrame:
        """Per workload, who answered (``served_by``: frontier, small, shadow, audit) and status: rows, first and last
        time, logged cost (sum and how many rows carry one), mean tokens, and how many rows carry a cascade's
        confidence (the small model's covered answers; the frontier's escalated ones). Aggregated in the database,
        not read out."""
        served_by = sa.func.coalesce(ExchangeRow.served_by, SERVED_BY_FRONTIER).label("served_by")
        query = sa.select(
            ExchangeRow.workload, served_by, ExchangeRow.status, sa.func.count().label("rows"),
            sa.func.min(ExchangeRow.created_at).label("first_at"), sa.func.max(ExchangeRow.created_at).label("last_at"),
            sa.func.sum(ExchangeRow.cost_usd).label("cost_usd"), sa.func.count(ExchangeRow.cost_usd).label("costed"),
            sa.func.avg(ExchangeRow.prompt_tokens).label("prompt_tokens"),
            sa.func.avg(ExchangeRow.completion_tokens).label("completion_tokens"),
            sa.func.count(ExchangeRow.confidence).label("with_confidence"),
        ).group_by(ExchangeRow.workload, served_by, ExchangeRow.status)
        with self.engine.connect() as conn:
            result = conn.execute(query)
            return pd.DataFrame(result.fetchall(), columns=list(result.keys()))

    def recent_answers(self, workload: str, limit: int) -> list[tuple[str | None, list | None]]:
        """The frontier's newest successful answers for the workload, newest first: (text, tool calls)."""
        query = (sa.select(ExchangeRow.response_text, ExchangeRow.tool_calls).where(ExchangeRow.workload == workload)
                 .where(_FRONTIER_ANSWER, ExchangeRow.status == STATUS_OK)
                 .where(sa.or_(ExchangeRow.response_text.is_not(None), ExchangeRow.tool_calls.is_not(None)))
                 .order_by(ExchangeRow.id.desc()).limit(limit))
        with self.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(query)]

    def read(self, workload: str, *, frontier_only: bool = False) -> pd.DataFrame:
        """All rows of one workload, oldest first, one column per table column.

        ``frontier_only`` leaves out the answers of the small model (served or shadowed): a
        model must not be trained on its own answers.
        """
        query = sa.select(ExchangeRow.__table__).where(ExchangeRow.workload == workload).order_by(ExchangeRow.id)
        if frontier_only:
            query = query.where(_FRONTIER_ANSWER)
        with self.engine.connect() as conn:
            result = conn.execute(query)
            return pd.DataFrame(result.fetchall(), columns=list(result.keys()))

    def dispose(self) -> None:
        self.engine.dispose()


def exchange_values(exchange: Exchange) -> dict[str, Any]:
    return {name: getattr(exchange, name) for name in COLUMNS if name != "id"}


def _values(rows: list[dict[str, Any]]) -> tuple:
    values: list[Any] = []
    for row in rows:
        try:
            columns = list(_INSERTED_VALUES(row))
        except KeyError:  # rows from the gateway and the journal have every column; others may not
            columns = [row.get(name) for name in _INSERTED_NAMES]
        for i in _JSON_POSITIONS:
            if columns[i] is not None and not isinstance(columns[i], str):  # NULL stays SQL NULL; text is JSON text
                columns[i] = orjson.dumps(columns[i]).decode()
        values += columns
    return tuple(values)


def _datetime(value: Any) -> Any:
    return dt.datetime.fromisoformat(value) if isinstance(value, str) else value


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets readers (the Dagster assets) run while a writer records traffic.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    # A multi-row INSERT keeps a statement journal; in a temporary file that is a create and an unlink per statement.
    cursor.execute("PRAGMA temp_store=MEMORY")
    # 16 MB of page cache (the default is 2 MB): the gateway's writer re-read index pages from the file per batch.
    cursor.execute("PRAGMA cache_size=-16384")
    cursor.close()


def save_snapshot(rows: pd.DataFrame, path: Path) -> None:
    """Parquet with the JSON columns as text, so rows with different keys round-trip exactly."""
    encoded = rows.copy()
    for column in JSON_COLUMNS:
        encoded[column] = encoded[column].map(json.dumps)
    encoded.to_parquet(path, index=False)


def load_snapshot(path: Path) -> pd.DataFrame:
    rows = pd.read_parquet(path)
    for column in JSON_COLUMNS:
        rows[column] = rows[column].map(json.loads)
    return rows
