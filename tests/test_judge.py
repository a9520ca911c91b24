"""The pairwise judge against a real OpenAI-compatible judge server on loopback."""

import re

import openai
import pytest

from distillery.evaluation import judge_pairwise
from distillery.serving import Completion, OpenAIServer


def _serve(verdict):
    """A judge server answering ``verdict(answer_a, answer_b)``; a request mentioning 'crash' gets a 500."""
    def chat(body):
        prompt = body["messages"][-1]["content"]
        if "crash" in prompt:
            raise RuntimeError("judge backend failed")
        a, b = re.search(r"Answer A:\n(.*)\n\nAnswer B:\n(.*)\n\nBetter", prompt, re.S).groups()
        return Completion(verdict(a, b), body["model"], 50, 1)

    server = OpenAIServer(("127.0.0.1", 0), chat, lambda: ["judge"])
    server.start_in_thread()
    return server


@pytest.fixture
def judge_url():
    servers = []

    def start(verdict):
        servers.append(_serve(verdict))
        return openai.OpenAI(base_url=servers[-1].url, api_key="test", max_retries=0)

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _prefers_refunds(a: str, b: str) -> str:
    return "TIE" if ("refund" in a) == ("refund" in b) else ("A" if "refund" in a else "B")


def test_wins_losses_ties_and_failed_calls_are_counted(judge_url):
    client = judge_url(_prefers_refunds)
    requests = [[{"role": "user", "content": text}] for text in ("q1", "q2", "q3", "crash please")]
    frontier = ["other", "refund", "refund", "refund"]
    candidate = ["refund", "other", "refund", "other"]
    result = judge_pairwise(client, "judge", requests, frontier, candidate)
    assert (result.wins, result.losses, result.ties, result.unjudged, result.judged) == (1, 1, 1, 1, 3)
    assert result.win_or_tie_rate == pytest.approx(2 / 3)


def test_a_judge_that_always_picks_the_first_answer_yields_only_ties(judge_url):
    client = judge_url(lambda a, b: "A")
    result = judge_pairwise(client, "judge", [[{"role": "user", "content": "q"}]] * 3, ["x"] * 3, ["y"] * 3)
    assert (result.wins, result.losses, result.ties) == (0, 0, 3)


def test_an_unreadable_verdict_leaves_the_row_unjudged(judge_url):
    client = judge_url(lambda a, b: "I cannot decide")
    result = judge_pairwise(client, "judge", [[{"role": "user", "content": "q"}]], ["x"], ["y"])
    assert (result.judged, result.unjudged) == (0, 1)
