"""Gateway API keys: callers hold these, never the provider's key. Only SHA-256 hashes are stored."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

import sqlalchemy as sa

from distillery.errors import DistilleryError
from distillery.settings import validate_workload
from distillery.store import ApiKeyRow, LogStore

KEY_PREFIX = "dst-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    name: str
    default_workload: str | None
    created_at: dt.datetime
    revoked_at: dt.datetime | None


class KeyStore:
    def __init__(self, store: LogStore):
        self.engine = store.engine

    def create(self, name: str, default_workload: str | None = None) -> str:
        """A new key; its plain text is returned once and never stored."""
        if default_workload:
            validate_workload(default_workload)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        row = {"name": name, "key_hash": hash_key(key), "default_workload": default_workload,
               "created_at": dt.datetime.now(dt.timezone.utc)}
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
    return ApiKey(row["name"], row["default_workload"], row["created_at"], row["revoked_at"])
