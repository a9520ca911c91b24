"""The built-in demo workload: support-ticket routing, answered by a frontier STAND-IN.

There is no frontier API on machines without internet, so the demo talks to
``FrontierStandIn``: an OpenAI-compatible endpoint on loopback that routes a ticket
into one of eight queues with deterministic keyword rules. It is not a language model
and says so in its model name (``frontier-standin``). To use a real provider instead,
pass ``--frontier-url`` (and set ``OPENAI_API_KEY``) to ``distillery demo``.
"""

from __future__ import annotations

import random
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from distillery.openai_http import Completion, OpenAIServer

WORKLOAD = "support-triage"
STANDIN_MODEL = "frontier-standin"

QUEUES = ["billing", "technical", "account", "shipping", "returns", "security", "sales", "feedback"]

SYSTEM_PROMPT = (
    "Route the customer ticket to one queue: " + ", ".join(QUEUES) + ". Answer with the queue name only."
)

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


_PRODUCTS = ["the mobile app", "the desktop client", "my Pro plan", "the Family plan", "the smart speaker",
             "the fitness band", "the web dashboard", "the starter kit"]
_ISSUES: dict[str, list[str]] = {
    "billing": [
        "I was charged twice for {product} this month.",
        "My invoice shows {amount} but I expected less.",
        "The payment for {product} failed even though my card is fine.",
        "Why was I overcharged on my last bill?",
        "Please cancel the subscription renewal before the next payment.",
        "I need a receipt for order {order} for my expenses.",
    ],
    "technical": [
        "{product} keeps showing an error when I open settings.",
        "Since the update, {product} has a crash every time I upload a photo.",
        "The page is stuck loading forever on {product}.",
        "My data won't sync between {product} and my laptop.",
        "There is a bug: the export button does nothing.",
        "{product} shows a blank screen after the logo.",
    ],
    "account": [
        "I can't log in even after resetting my password.",
        "I'm locked out of my account after too many attempts.",
        "How do I change the email address on my account?",
        "Two-factor codes never reach my phone so I can't sign in.",
        "I forgot my username, can you help?",
    ],
    "shipping": [
        "My package for order {order} hasn't arrived yet.",
        "The tracking number for order {order} shows no updates.",
        "When will {product} be shipped? It has been a week.",
        "The courier left my parcel at the wrong address.",
        "Can I change the delivery date for order {order}?",
    ],
    "returns": [
        "I'd like to return {product}, it is not what I expected.",
        "The item arrived damaged, can I get an exchange?",
        "I ordered the wrong size and want to send it back.",
        "{product} is broken out of the box.",
        "What is your return policy for opened items?",
    ],
    "security": [
        "I think my account was hacked, I see orders I never placed.",
        "I got a phishing email pretending to be you.",
        "There is suspicious activity on my account from another country.",
        "Someone else changed my settings without permission.",
        "My card was stolen and used on your site, this is fraud.",
    ],
    "sales": [
        "Can I get a quote for 50 licenses of {product}?",
        "Do you offer enterprise pricing for larger teams?",
        "Is there a discount for nonprofits on {product}?",
        "I'd like to book a demo for my team.",
        "We want to buy in bulk, who can I talk to?",
    ],
    "feedback": [
        "Just wanted to say I love {product}!",
        "A dark mode would be great in {product}.",
        "Feature request: let me pin favourite items.",
        "I wish {product} had more colour options.",
        "Small suggestion: make the font a bit larger.",
    ],
}
_OPENERS = ["", "", "Hi,", "Hello team,", "Hey there.", "Good morning,", "To whom it may concern:", "Urgent:"]
_FILLERS = ["", "", "", "I have been a customer for years.", "This is the second time I'm writing.",
            "Thanks in advance.", "Please get back to me soon.", "Not happy about this at all."]
_CLOSERS = ["", "", "Thanks!", "Regards, Sam", "Cheers", "- sent from my phone", "Best, A. Lee"]


def generate_tickets(count: int, seed: int = 7) -> list[str]:
    """Varied, noisy tickets; about one in ten mixes in a second queue's topic."""
    rng = random.Random(seed)
    tickets = []
    for _ in range(count):
        queue = rng.choice(QUEUES)
        parts = [rng.choice(_OPENERS), _fill(rng.choice(_ISSUES[queue]), rng)]
        if rng.random() < 0.1:
            parts.append("Also, " + _fill(rng.choice(_ISSUES[rng.choice(QUEUES)]), rng).lower())
        parts += [rng.choice(_FILLERS), rng.choice(_CLOSERS)]
        text = " ".join(p for p in parts if p)
        if rng.random() < 0.2:
            text = text.lower()
        if rng.random() < 0.15:
            text = _typo_in_filler(text, rng)
        tickets.append(text)
    return tickets


def _fill(template: str, rng: random.Random) -> str:
    return template.format(
        product=rng.choice(_PRODUCTS),
        order=f"#{rng.randint(10000, 99999)}",
        amount=f"${rng.randint(5, 400)}.{rng.randint(0, 99):02d}",
    )


_FILLER_WORDS = re.compile(r"\b(the|this|about|please|thanks|again|really|there)\b", re.IGNORECASE)


def _typo_in_filler(text: str, rng: random.Random) -> str:
    # Typos only in words no routing rule reads, so the stand-in's label stays learnable.
    matches = list(_FILLER_WORDS.finditer(text))
    if not matches:
        return text
    match = rng.choice(matches)
    word = match.group(0)
    i = rng.randrange(len(word) - 1)
    typo = word[:i] + word[i + 1] + word[i] + word[i + 2:]
    return text[: match.start()] + typo + text[match.end():]


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


def demo_messages(ticket: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": ticket}]


@dataclass
class TrafficResult:
    calls: int
    failed: int
    gateway_url: str
    written: int
    journaled: int
    log_store_url: str


def send_demo_traffic(calls: int, *, frontier_url: str | None = None, model: str = STANDIN_MODEL,
                      api_key_env: str | None = None, concurrency: int = 8,
                      on_call: Callable[[], None] | None = None, seed: int = 7) -> TrafficResult:
    """Send demo tickets through a capture gateway to the frontier (the stand-in unless a URL is given).

    The gateway records every exchange in the configured log store and is stopped, and so
    flushed, before this returns.
    """
    import openai

    from distillery.gateway.app import WORKLOAD_HEADER
    from distillery.gateway.config import GatewayConfig
    from distillery.gateway.server import BackgroundGateway

    standin = None if frontier_url else start_frontier_standin()
    upstream = frontier_url or standin.url
    gateway = BackgroundGateway(GatewayConfig.single(upstream, api_key_env=api_key_env, port=0,
                                                     require_api_key=False)).start()
    client = openai.OpenAI(base_url=gateway.url, api_key="demo", max_retries=2,
                           default_headers={WORKLOAD_HEADER: WORKLOAD})

    def send(ticket: str) -> bool:
        try:
            client.chat.completions.create(model=model, messages=demo_messages(ticket), max_tokens=8, temperature=0)
            return True
        except openai.APIError:
            return False  # the gateway recorded it as a failed exchange; curation drops it
        finally:
            if on_call:
                on_call()

    try:
        with ThreadPoolExecutor(concurrency) as pool:
            failed = sum(not ok for ok in pool.map(send, generate_tickets(calls, seed)))
    finally:
        gateway.stop()
        if standin:
            standin.shutdown()
    recorder = gateway.gateway.recorder
    return TrafficResult(calls, failed, gateway.url, recorder.written, recorder.journaled, recorder.store.url)


@dataclass
class CutoverStep:
    route: str
    calls: int
    failed: int
    answered_by_small_model: int
    note: str = ""


def walk_cutover(*, frontier_url: str | None = None, model: str = STANDIN_MODEL, api_key_env: str | None = None,
                 calls_per_step: int = 12, say: Callable[[str], None] = print) -> list[CutoverStep]:
    """Move the demo workload from shadow to canary to the small model through a live gateway, then kill the
    small model's server mid-traffic: callers keep getting answers (from the frontier) and the route rolls back.
    The deployed endpoint is started again at the end, and the route left in shadow.
    """
    import os
    import signal
    import time

    import openai

    from distillery.gateway.app import WORKLOAD_HEADER
    from distillery.gateway.config import GatewayConfig
    from distillery.gateway.server import BackgroundGateway
    from distillery.logstore import LogStore
    from distillery.routing import CANARY, SHADOW, SMALL, RollbackPolicy, RouteStore
    from distillery.serving import LocalEndpoints

    routes, endpoints = RouteStore(LogStore().engine), LocalEndpoints()
    route, endpoint = routes.get(WORKLOAD), endpoints.current(WORKLOAD)
    if route is None or endpoint is None:
        say("no deployed endpoint for the workload (the gate refused it): the cut-over walk is skipped")
        return []
    standin = None if frontier_url else start_frontier_standin()
    config = GatewayConfig.single(frontier_url or standin.url, api_key_env=api_key_env, port=0, require_api_key=False,
                                  route_refresh_s=0.2, rollback=RollbackPolicy(min_samples=4, max_p95_latency_ms=30_000))
    gateway = BackgroundGateway(config).start()
    client = openai.OpenAI(base_url=gateway.url, api_key="demo", max_retries=0, timeout=120,
                           default_headers={WORKLOAD_HEADER: WORKLOAD})
    tickets = iter(generate_tickets(10 * calls_per_step, seed=99))
    steps: list[CutoverStep] = []

    def traffic(label: str, note: str = "") -> CutoverStep:
        failed = small = 0
        for i in range(calls_per_step):
            try:
                answer = client.chat.completions.create(model=model, messages=demo_messages(next(tickets)),
                                                        max_tokens=8, temperature=0, user=f"customer-{i}")
                small += answer.model != model  # the small model answers under its adapter's name
            except openai.APIError:
                failed += 1
        steps.append(CutoverStep(label, calls_per_step, failed, small, note))
        say(f"  {label}: {calls_per_step} calls, {failed} failed, {small} answered by the small model"
            + (f" ({note})" if note else ""))
        return steps[-1]

    def move(mode: str, percent: float = 0.0) -> None:
        routes.set(replace(routes.get(WORKLOAD), mode=mode, canary_percent=percent), "demo cut-over walk")
        time.sleep(0.5)  # the gateway reads routes every 0.2 s

    try:
        move(SHADOW)
        traffic("shadow", "the frontier answers; the small model answers a copy, logged and compared")
        move(CANARY, 50)
        traffic("canary 50%", "callers chosen by a stable hash of their user id")
        move(SMALL)
        traffic("small", "every call")
        os.kill(endpoint.pid, signal.SIGKILL)
        say(f"  forced fault: the small model's server (pid {endpoint.pid}) is killed")
        traffic("small, server dead", "each failed small-model call falls back to the frontier")
        time.sleep(0.5)
        for event in routes.events(WORKLOAD, limit=3):
            if event.kind == "rollback":
                say(f"  rollback recorded: {event.from_mode} -> {event.to_mode} ({event.reason})")
    finally:
        gateway.stop()
        if standin:
            standin.shutdown()
        restarted = endpoints.deploy(WORKLOAD, endpoint.base_model, Path(endpoint.adapter_path), endpoint.model,
                                     demo_messages("I was charged twice"))
        routes.set(replace(routes.get(WORKLOAD), mode=SHADOW, canary_percent=0.0, small_url=restarted.url),
                   "demo: endpoint restarted after the forced fault")
        say(f"  the endpoint is serving again at {restarted.url}; the route is back in shadow")
    return steps
