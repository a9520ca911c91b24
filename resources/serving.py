import dagster as dg
from pydantic import Field

from distillery.serving import LOCAL, REMOTE, VLLM, Endpoints


class ServingResource(dg.ConfigurableResource):
    """Model servers: one OpenAI-compatible server per base model, serving every workload's adapter on it."""

    backend: str = Field(default="auto", description="local (transformers), vllm (started here), remote (a vLLM "
                         "server at remote_url), or auto: vllm when it is installed and a GPU is present, else local.")
    max_lora_rank: int = Field(default=64, description="vllm/remote: --max-lora-rank; adapters above it are refused.")
    host: str = Field(default="127.0.0.1", description="Interface the model servers bind.")
    state_dir: str | None = Field(default=None, description="Endpoint state and logs; empty: $DISTILLERY_HOME/endpoints.")
    startup_timeout_s: float = Field(default=300, description="How long a new server may take to load and answer.")
    vllm_python: str | None = Field(default=None, description="vllm: the Python that has vLLM (e.g. the virtualenv "
                                    "scripts/setup-vllm makes); empty: this one.")
    vllm_args: list[str] = Field(default_factory=list, description="vllm: extra server flags, e.g. "
                                 "['--dtype', 'float32'] on CPUs, ['--max-loras', '4'].")
    remote_url: str | None = Field(default=None, description="remote: the vLLM server's OpenAI base URL "
                                   "(started with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True).")
    remote_path_map: dict[str, str] = Field(default_factory=dict, description="remote: local path prefix -> the "
                                            "same folder as the server sees it (a shared volume), for adapter paths.")

    def open(self) -> Endpoints:
        return Endpoints(self.state_dir, self.host, self.startup_timeout_s, self._backend(), self.max_lora_rank,
                         vllm_python=self.vllm_python, vllm_args=self.vllm_args, remote_url=self.remote_url,
                         remote_path_map=self.remote_path_map)

    def _backend(self) -> str:
        if self.backend != "auto":
            return self.backend
        if self.remote_url:
            return REMOTE
        import importlib.util

        import torch

        return VLLM if importlib.util.find_spec("vllm") and torch.cuda.is_available() else LOCAL
