import dagster as dg
from pydantic import Field

from distillery.evaluation import judge_pairwise


class JudgeResource(dg.ConfigurableResource):
    """An optional pairwise LLM judge, reached through an OpenAI-compatible URL (the gateway, so its calls are
    logged and costed like any other). Off unless ``model`` is set."""

    base_url: str = Field(default="http://127.0.0.1:8080/v1", description="OpenAI-compatible base URL.")
    model: str = Field(default="", description="Judge model; empty: no judge.")
    api_key: str = Field(default="", description="Key for base_url; pass dg.EnvVar('DISTILLERY_JUDGE_API_KEY').")
    timeout_s: float = Field(default=60, description="Per call; a failed call leaves its row unjudged.")
    max_rows: int = Field(default=50, description="Test rows judged (each twice, answers swapped).")

    def open(self):
        """The judge as ``evaluation.Judge``, or None when no model is configured."""
        if not self.model:
            return None
        import openai

        client = openai.OpenAI(base_url=self.base_url, api_key=self.api_key or "none", timeout=self.timeout_s,
                               max_retries=1)

        def judge(requests, frontier, candidate):
            rows = slice(0, self.max_rows)
            return judge_pairwise(client, self.model, requests[rows], frontier[rows], candidate[rows])

        return judge
