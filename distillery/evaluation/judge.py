"""Pairwise LLM-as-judge: does a strong model prefer the fine-tuned answer or the frontier's?

Each row is judged twice with the two answers in swapped positions, because judges favour
a position. The fine-tuned model wins a row only when preferred in both orders, loses it
when the frontier's answer is preferred in both, and ties otherwise (a split verdict is
position bias, not a preference). A call that fails (timeout, 5xx after the client's
retries, an unreadable verdict) leaves its row unjudged and counted; it never fails the
evaluation.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

INSTRUCTIONS = (
    "You compare two answers, A and B, to the same request. Judge which one answers the request better: "
    "correct, complete, and in the requested format. Reply with exactly one word: A, B, or TIE."
)
# The variable a judge's key travels in to a worker process (never in its Pipes extras).
JUDGE_API_KEY_VARIABLE = "DISTILLERY_JUDGE_API_KEY"
_VERDICT = re.compile(r"\b(A|B|TIE)\b")


@dataclass
class JudgeResult:
    model: str
    judged: int
    wins: int  # the fine-tuned answer preferred in both orders
    ties: int
    losses: int  # the frontier's answer preferred in both orders
    unjudged: int  # rows with a failed call or an unreadable verdict

    @property
    def win_or_tie_rate(self) -> float:
        return (self.wins + self.ties) / self.judged if self.judged else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "win_or_tie_rate": self.win_or_tie_rate}


def _render(messages: list[dict]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _verdict(client, model: str, request: list[dict], first: str, second: str) -> str | None:
    """'A', 'B' or 'TIE' for answers in this order; None when the call or its verdict fails."""
    import openai

    prompt = f"Request:\n{_render(request)}\n\nAnswer A:\n{first}\n\nAnswer B:\n{second}\n\nBetter answer (A, B or TIE):"
    try:
        response = client.chat.completions.create(
            model=model, temperature=0, max_tokens=4,
            messages=[{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": prompt}])
    except openai.OpenAIError:
        return None
    found = _VERDICT.search((response.choices[0].message.content or "").upper())
    return found.group(1) if found else None


def judge_pairwise(client, model: str, requests: list[list[dict]], frontier: list[str],
                   candidate: list[str]) -> JudgeResult:
    """Judge each row's fine-tuned answer against the frontier's, in both positions."""
    wins = ties = losses = unjudged = 0
    for request, reference, answer in zip(requests, frontier, candidate):
        candidate_first = _verdict(client, model, request, answer, reference)
        frontier_first = _verdict(client, model, request, reference, answer)
        if candidate_first is None or frontier_first is None:
            unjudged += 1
        elif candidate_first == "A" and frontier_first == "B":
            wins += 1
        elif candidate_first == "B" and frontier_first == "A":
            losses += 1
        else:
            ties += 1
    return JudgeResult(model, wins + ties + losses, wins, ties, losses, unjudged)


@dataclass(frozen=True)
class JudgeSettings:
    """Where the judge is reached: an OpenAI-compatible URL (the gateway, so its calls are logged and costed)."""

    base_url: str
    model: str
    timeout_s: float = 60
    max_rows: int = 50  # test rows judged (each twice, answers swapped)


def pairwise_judge(settings: JudgeSettings, api_key: str):
    """``evaluate(..., judge=)``'s callable for these settings: judges the first ``max_rows`` rows."""
    import openai

    client = openai.OpenAI(base_url=settings.base_url, api_key=api_key or "none", timeout=settings.timeout_s,
                           max_retries=1)

    def judge(requests, frontier, candidate):
        rows = slice(0, settings.max_rows)
        return judge_pairwise(client, settings.model, requests[rows], frontier[rows], candidate[rows])

    return judge
