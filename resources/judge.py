import dagster as dg
from pydantic import Field

from distillery.evaluation import JUDGE_API_KEY_VARIABLE, JudgeSettings


class JudgeResource(dg.ConfigurableResource):
    """An optional pairwise LLM judge, reached through an OpenAI-compatible URL (the gateway, so its calls are
    logged and costed like any other). Off unless ``model`` is set."""

    base_url: str = Field(default="http://127.0.0.1:8080/v1", description="OpenAI-compatible base URL.")
    model: str = Field(default="", description="Judge model; empty: no judge.")
    api_key: str = Field(default="", description=f"Key for base_url; pass dg.EnvVar('{JUDGE_API_KEY_VARIABLE}').")
    timeout_s: float = Field(default=60, description="Per call; a failed call leaves its row unjudged.")
    max_rows: int = Field(default=50, description="Test rows judged (each twice, answers swapped).")

    def settings(self) -> JudgeSettings | None:
        """The judge's settings without its key, or None when no model is configured."""
        return JudgeSettings(self.base_url, self.model, self.timeout_s, self.max_rows) if self.model else None
