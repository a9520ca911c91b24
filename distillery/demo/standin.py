"""The frontier STAND-IN: an OpenAI-compatible endpoint on loopback that answers the demo workloads.

There is no frontier API on machines without internet, so the demo talks to this: it routes
a ticket into one of eight queues with deterministic keyword rules, and for the demo's fleet
(``workload.EXTRACTION_PROMPT``, ``workload.REPLY_PROMPT``) pulls the order number and amount
out of a ticket as JSON or writes a templated first reply; offered tools (``workload.ROUTER_TOOLS``), it
calls the first one (or the one ``tool_choice`` names) with the queue and whether the ticket is urgent. It is not a language model and says
so in its model name (``frontier-standin``). To use a real provider instead, pass
``--frontier-url`` (and set ``OPENAI_API_KEY``) to ``distillery demo``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from distillery.demo.workload import EXTRACTION_PROMPT, REPLY_PROMPT
from distillery.pricing import Price
from distillery import wire
from distillery.serving import Completion, OpenAIServer
from distillery.tasks import tool_spec

STANDIN_MODEL = "frontier-standin"
# Made-up list prices for the model names the demo asks for, so the gateway logs a cost per call and the
# portfolio has call sites at different prices: a mid-priced default, a premium one and a cheap one.
STANDIN_PRICES = {STANDIN_MODEL: Price(5.0, 20.0), f"{STANDIN_MODEL}-large": Price(100.0, 400.0),
                  f"{STANDIN_MODEL}-mini": Price(0.6, 2.4)}
_ORDER = re.compile(r"#(\d{5})")
_AMOUNT = re.compile(r"\$(\d+\.\d{2})")
_REPLIES = {
    "billing": "Thanks for reaching out about your bill. I have asked our billing team to check the charge and "
               "they will confirm the correct amount within one business day.",
    "technical": "Sorry the app is giving you trouble. Could you tell us your device and app version? Meanwhile, "
                 "restarting the app after an update often clears this.",
    "account": "I can help you get back into your account. I have sent a secure reset link to the email on file; "
               "it is valid for one hour.",
    "shipping": "Thanks for your patience with the delivery. I have opened a trace with the courier and will send "
                "you the tracking update as soon as we hear back.",
    "returns": "Sorry the item did not work out. I have started a return for you; a prepaid label is on its way "
               "to your inbox.",
    "security": "Thank you for telling us. I have locked the account to protect you; please reset your password "
                "with the link we just sent and review recent orders.",
    "sales": "Thanks for your interest! A member of our sales team will reach out today with pricing for your "
             "team size.",
    "feedback": "Thank you for the kind words and the idea! I have passed it on to our product team.",
}

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


def standin_answer(system: str, ticket: str) -> str:
    """The stand-in's answer to a ticket under one of the demo's system prompts."""
    queue = route_ticket(ticket)
    if system == EXTRACTION_PROMPT:
        order, amount = _ORDER.search(ticket), _AMOUNT.search(ticket)
        return json.dumps({"queue": queue, "order": order and order.group(1),
                           "amount": amount and float(amount.group(1))})
    if system == REPLY_PROMPT:
        return _REPLIES[queue]
    return queue


def standin_chat(body: dict[str, Any]) -> Completion:
    messages = body["messages"]
    ticket = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    prompt_tokens = sum(_approx_tokens(m["content"]) for m in messages)
    # It answers under the name it was asked for (one of its price tiers), as a provider does.
    model = body.get("model") if body.get("model") in STANDIN_PRICES else STANDIN_MODEL
    tools = tool_spec(body)
    if tools and tools.forced != "none":
        queue = route_ticket(ticket)
        arguments = json.dumps({"queue": queue, "urgent": queue == "security" or "urgent" in ticket.lower()})
        name = tools.forced if tools.forced not in (None, "required") else tools.functions[0][0]
        return Completion(None, model, prompt_tokens, _approx_tokens(arguments) + 4, "tool_calls",
                          [wire.tool_call(name, arguments)])
    answer = standin_answer(system, ticket)
    return Completion(answer, model, prompt_tokens, _approx_tokens(answer))


def start_frontier_standin(host: str = "127.0.0.1", port: int = 0) -> OpenAIServer:
    """Start the stand-in on a background thread; ``server.url`` is its OpenAI base URL."""
    server = OpenAIServer((host, port), standin_chat, lambda: list(STANDIN_PRICES))
    server.start_in_thread()
    return server
