"""Gateway API keys: callers hold these, never the provider's key. Only SHA-256 hashes are stored.

A key writes only to the workloads of its scope, because whoever writes to a workload decides what its
next model learns: the first is the default of its calls, a header or ``metadata.workload`` may pick
another one of them, and anything else is refused (403). ``all_workloads`` keys are for trusted
importers and admins.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

import sqlalchemy as sa

from distillery.errors import DistilleryError
from distillery.settings import DEFAULT_WORKLOAD, validate_workload
from distillery.store import ApiKeyRow, LogStore

KEY_PREFIX = "dst-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    name: str
    workloads: tuple[str, ...]
    all_workloads: bool
    created_at: dt.datetime
    revoked_at: dt.datetime | None

    @property
    def default_workload(self) -> str:
        return self.workloads[0] if self.workloads else DEFAULT_WORKLOAD

    def may_write(self, workload: str) -> bool:
        return self.all_workloads or workload in self.workloads

    @property
    def scope(self) -> str:
        return "all workloads" if self.all_workloads else ", ".join(self.workloads)


class KeyStore:
    def __init__(self, store: LogStore):
        self.engine = store.engine

    def create(self, name: str, workloads: list[str] | tuple[str, ...] = (), *, all_workloads: bool = False) -> str:
        """A new key for ``workloads`` (the first is its default) or for all of them; its plain text is
        returned once and never stored."""
        if not workloads and not all_workloads:
            raise DistilleryError(f"key {name!r} needs a scope: one or more workloads, or all workloads")
        for workload in workloads:
            validate_workload(workload)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        row = {"name": name, "key_hash": hash_key(key), "workloads": list(dict.fromkeys(workloads)),
               "all_workloads": all_workloads, "created_at": dt.datetime.now(dt.timezone.utc)}
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.insert(ApiKeyRow), row)
        except sa.exc.IntegrityError as exc:
            raise DistilleryError(f"a gateway key named {name!r} exists already") from exc
        return key

    def lookup(self, key: str) -> ApiKey | None:
        """The key's record if it exists and is not revoked."""
        query = sa.select(ApiKeyRow).where(ApiKeyRow.key_hash == hash_key(key), ApiKeyRow.revoked_at.is_(None))
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return _api_key(row) if row else None

    def list(self) -> list[ApiKey]:
        with self.engine.connect() as conn:
            return [_api_key(r) for r in conn.execute(sa.select(ApiKeyRow).order_by(ApiKeyRow.id)).mappings()]

    def revoke(self, name: str) -> bool:
        statement = (sa.update(ApiKeyRow).where(ApiKeyRow.name == name, ApiKeyRow.revoked_at.is_(None))
                     .values(revoked_at=dt.datetime.now(dt.timezone.utc)))
        with self.engine.begin() as conn:
            return conn.execute(statement).rowcount > 0


def _api_key(row) -> ApiKey:
    return ApiKey(row["name"], tuple(row["workloads"] or ()), bool(row["all_workloads"]), row["created_at"],
                  row["revoked_at"])
