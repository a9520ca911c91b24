import dagster as dg
from pydantic import Field

from distillery.serving import LocalEndpoints


class ServingResource(dg.ConfigurableResource):
    """The local serving backend: one OpenAI-compatible model-server process per workload."""

    host: str = Field(default="127.0.0.1", description="Interface the model servers bind.")
    state_dir: str | None = Field(default=None, description="Endpoint state and logs; empty: $DISTILLERY_HOME/endpoints.")
    startup_timeout_s: float = Field(default=300, description="How long a new server may take to load and answer.")

    def open(self) -> LocalEndpoints:
        return LocalEndpoints(self.state_dir, self.host, self.startup_timeout_s)
