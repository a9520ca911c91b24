"""The frontier STAND-IN: an OpenAI-compatible endpoint on loopback that answers the demo workload.

There is no frontier API on machines without internet, so the demo talks to this: it routes
a ticket into one of eight queues with deterministic keyword rules. It is not a language
model and says so in its model name (``frontier-standin``). To use a real provider instead,
pass ``--frontier-url`` (and set ``OPENAI_API_KEY``) to ``distillery demo``.
"""

from __future__ import annotations

from typing import Any

from distillery.serving import Completion, OpenAIServer

STANDIN_MODEL = "frontier-standin"

# Keyword rules of the stand-in. Security outranks everything (as a real triage policy
# would); ties go to the earlier queue in this order; no hit at all means feedback.
_RULES: list[tuple[str, int, tuple[str, ...]]] = [
    ("security", 3, ("hacked", "phishing", "suspicious", "unauthorized", "fraud", "stolen", "someone else")),
    ("billing", 1, ("charged", "invoice", "payment", "subscription", "bill", "overcharged", "receipt")),
    ("account", 1, ("password", "log in", "login", "locked out", "two-factor", "username", "sign in", "email address")),
    ("technical", 1, ("crash", "error", "bug", "loading", "sync", "freez", "won't open", "blank screen")),
    ("shipping", 1, ("delivery", "tracking", "package", "shipped", "courier", "arrive", "parcel")),
    ("returns", 1, ("return", "exchange", "wrong size", "damaged", "broken", "send it back")),
    ("sales", 1, ("pricing", "quote", "enterprise", "discount", "demo", "bulk", "licenses")),
    ("feedback", 1, ("suggestion", "love", "feature request", "would be great", "wish")),
]


def route_ticket(text: str) -> str:
    """The stand-in's deterministic answer for one ticket."""
    lowered = text.lower()
    scores = {queue: weight * sum(lowered.count(k) for k in keywords) for queue, weight, keywords in _RULES}
    best = max(scores.values())
    if best == 0:
        return "feedback"
    return next(queue for queue, _, _ in _RULES if scores[queue] == best)


def _approx_tokens(text: str) -> int:
    return max(1, round(len(text.split()) * 4 / 3))


def standin_chat(body: dict[str, Any]) -> Completion:
    messages = body["messages"]
    ticket = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    answer = route_ticket(ticket)
    prompt_tokens = sum(_approx_tokens(m["content"]) for m in messages)
    return Completion(answer, STANDIN_MODEL, prompt_tokens, _approx_tokens(answer))


def start_frontier_standin(host: str = "127.0.0.1", port: int = 0) -> OpenAIServer:
    """Start the stand-in on a background thread; ``server.url`` is its OpenAI base URL."""
    server = OpenAIServer((host, port), standin_chat, lambda: [STANDIN_MODEL])
    server.start_in_thread()
    return server
