import dagster as dg
from pydantic import Field

from distillery.store import LogStore


class LogStoreResource(dg.ConfigurableResource):
    """The captured-exchange store the gateway writes and the lifecycle reads."""

    url: str | None = Field(
        default=None,
        description="SQLAlchemy URL. Empty: $DISTILLERY_LOG_STORE_URL, else SQLite in $DISTILLERY_HOME. "
        "Pass credentials with dg.EnvVar.",
    )

    def open(self) -> LogStore:
        store = LogStore(self.url)
        store.upgrade()
        return store
