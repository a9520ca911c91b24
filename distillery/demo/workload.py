"""The built-in demo workload: support tickets to route into one of eight queues.

Varied, noisy tickets (openers, fillers, typos, a second topic now and then) and the
system prompt every call carries.
"""

from __future__ import annotations

import random
import re

WORKLOAD = "support-triage"

QUEUES = ["billing", "technical", "account", "shipping", "returns", "security", "sales", "feedback"]

SYSTEM_PROMPT = (
    "Route the customer ticket to one queue: " + ", ".join(QUEUES) + ". Answer with the queue name only."
)

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


def _call(system_prompt: str, ticket: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": ticket}]


def demo_messages(ticket: str) -> list[dict[str, str]]:
    return _call(SYSTEM_PROMPT, ticket)


# The demo's fleet: three more call sites of the same company, captured beside the triage workload.
EXTRACTION_WORKLOAD = "order-extraction"
EXTRACTION_PROMPT = ("Extract the order details from the customer ticket as a JSON object with the keys queue, "
                     "order and amount (null when absent).")
REPLY_WORKLOAD = "reply-drafts"
REPLY_PROMPT = "Draft a short, friendly first reply to the customer ticket."


def extraction_messages(ticket: str) -> list[dict[str, str]]:
    return _call(EXTRACTION_PROMPT, ticket)


def reply_messages(ticket: str) -> list[dict[str, str]]:
    return _call(REPLY_PROMPT, ticket)


# A call site that routes by function call, as agent frameworks do: the answer is a call of ``route_ticket``.
TOOL_WORKLOAD = "ticket-router"
TOOL_PROMPT = "You are the helpdesk's router. Call route_ticket for the customer ticket."
ROUTER_TOOLS = [{"type": "function", "function": {
    "name": "route_ticket", "description": "Send a ticket to a queue of the helpdesk.",
    "parameters": {"type": "object", "properties": {"queue": {"type": "string", "enum": QUEUES},
                                                    "urgent": {"type": "boolean"}},
                   "required": ["queue", "urgent"], "additionalProperties": False}}}]


def tool_messages(ticket: str) -> list[dict[str, str]]:
    return _call(TOOL_PROMPT, ticket)
