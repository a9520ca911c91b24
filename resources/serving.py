import dagster as dg
from pydantic import Field

from distillery.serving import LOCAL, VLLM, LocalEndpoints


class ServingResource(dg.ConfigurableResource):
    """Model servers: one OpenAI-compatible server per base model, serving every workload's adapter on it."""

    backend: str = Field(default="auto", description="local (transformers), vllm (GPU), or auto: vllm when it is "
                         "installed and a GPU is present, else local.")
    max_lora_rank: int = Field(default=64, description="vllm: --max-lora-rank; adapters above it are refused.")

    host: str = Field(default="127.0.0.1", description="Interface the model servers bind.")
    state_dir: str | None = Field(default=None, description="Endpoint state and logs; empty: $DISTILLERY_HOME/endpoints.")
    startup_timeout_s: float = Field(default=300, description="How long a new server may take to load and answer.")

    def open(self) -> LocalEndpoints:
        return LocalEndpoints(self.state_dir, self.host, self.startup_timeout_s, self._backend(), self.max_lora_rank)

    def _backend(self) -> str:
        if self.backend != "auto":
            return self.backend
        import importlib.util

        import torch

        return VLLM if importlib.util.find_spec("vllm") and torch.cuda.is_available() else LOCAL
