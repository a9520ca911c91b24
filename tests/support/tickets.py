"""Support tickets on three keyword topics: a labelled workload a classifier student learns in a few dozen steps."""

import random

SYSTEM = {"role": "system", "content": "Route the ticket."}
TOPICS = {"billing": ["charged twice", "refund my payment", "invoice is wrong"],
          "shipping": ["parcel never arrived", "where is my package", "delivery is late"],
          "account": ["cannot log in", "reset my password", "locked out of my account"]}


def tickets(n: int, seed: int) -> list[dict]:
    """``n`` rows (system, user, the label as the assistant's answer), the same for the same seed."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(list(TOPICS))
        text = f"hi, {rng.choice(TOPICS[label])} {rng.choice(['please help', 'thanks', 'asap', ''])}".strip()
        rows.append({"messages": [SYSTEM, {"role": "user", "content": text}, {"role": "assistant", "content": label}]})
    return rows
