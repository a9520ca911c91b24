"""Serving throughput and latency of a deployed adapter behind the gateway, against the evaluation engine.

    python benchmarks/serving.py [--backend local|vllm] [--rows N] [--adapter PATH] [--concurrency 1,16,64] [--quick]

The adapter (``--adapter``, else the latest demo adapter in ``$DISTILLERY_HOME``, else one trained now on
the built-in demo workload as ``scripts/demo`` does) is deployed with the chosen backend, behind a
gateway (a separate process, as in production) whose route for the workload is ``small``. Its held-out
rows (repeated up to ``--rows``) are sent through the gateway at each concurrency, every caller
waiting for its answer. In the same run, before any server starts, the evaluation engine answers the
same rows in its batches: the baseline ``served_vs_eval`` divides by. Served answers (at 16 concurrent)
are compared with the evaluated ones; every difference is listed with the log-probability gap between
the two answers under the model, so a near-tie that a different batch tipped shows as one. These
machines are noisy, so the 16-concurrent load and the evaluation baseline run ``--rounds`` times,
interleaved, and their medians are compared. Calls the gateway answered from the frontier instead
are counted with their reasons. ``--quick`` checks the machinery in seconds instead: the tests' tiny random model
with an adapter trained for a few steps on demo tickets, 16 rows at 1 and 4 concurrent, one round. The last line is
one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import torch
from datasets import load_from_disk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gateway import wait_until_up  # noqa: E402

from distillery.demo import (QUEUES, WORKLOAD, demo_messages, generate_tickets, route_ticket,  # noqa: E402
                             send_demo_traffic, start_frontier_standin)
from distillery.routing import SMALL, Route, RouteStore  # noqa: E402
from distillery.serving import Endpoints, generate, load_model  # noqa: E402
from distillery.settings import home  # noqa: E402
from distillery.store import ArtifactStore, LogStore  # noqa: E402
from distillery.tasks import DecodingPolicy  # noqa: E402

NEAR_TIE_NATS = 0.05  # two answers whose log-probabilities differ by less than this are a near-tie


def demo_adapter() -> Path:
    """The latest demo adapter in $DISTILLERY_HOME, trained first (demo traffic, then the lifecycle) if there is none."""
    artifacts = ArtifactStore()
    if not artifacts.versions(WORKLOAD, "lora_adapter"):
        print(f"no {WORKLOAD} adapter in {home()}: capturing demo traffic and running the lifecycle", file=sys.stderr)
        send_demo_traffic(400)
        from pipelines.run import run_lifecycle

        if not run_lifecycle(WORKLOAD, gate={"max_gap_to_frontier_points": 100, "min_test_rows": 1}):
            sys.exit("the lifecycle run failed")
    return artifacts.latest(WORKLOAD, "lora_adapter").path / "adapter"


def quick_adapter(folder: Path) -> tuple[Path, list[list[dict]]]:
    """--quick: the tests' tiny model, an adapter trained for a few steps on demo tickets under the demo's label
    policy, and the tickets it was not trained on."""
    from datasets import Dataset

    sys.path.insert(0, str(ROOT / "tests"))
    from support.tiny_model import save_tiny_model

    from distillery.training import TrainingConfig, train_lora

    tickets = generate_tickets(48)
    rows = [{"messages": [*demo_messages(t), {"role": "assistant", "content": route_ticket(t)}]} for t in tickets]
    adapter = folder / "adapter"
    train_lora(Dataset.from_list(rows[:32]), Dataset.from_list(rows[32:36]), str(save_tiny_model(folder / "model")),
               adapter, TrainingConfig(rank=8, alpha=16, max_steps=4, batch_size=8, warmup_fraction=0))
    DecodingPolicy(labels=tuple(QUEUES)).save(adapter)
    return adapter, [demo_messages(t) for t in tickets[32:]]


def held_out_rows(adapter: Path) -> list[list[dict]]:
    """The prompts of the test split the adapter was evaluated on (the artifact layout: <version>/adapter)."""
    if not (adapter.parent / "manifest.json").exists():
        sys.exit(f"{adapter} is not a lora_adapter artifact's adapter folder: its held-out rows are unknown")
    manifest = json.loads((adapter.parent / "manifest.json").read_text())
    curated = ArtifactStore().get(manifest.get("workload", WORKLOAD), "curated_dataset", manifest["dataset_version"])
    return [row["messages"][:-1] for row in load_from_disk(str(curated.path / "dataset"))["test"]]


def answer_logprob(model, tokenizer, conversation: list[dict], answer: str) -> float:
    prompt = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*conversation, {"role": "assistant", "content": answer}], tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1]
    return float(torch.log_softmax(logits, -1).gather(1, ids[0, len(prompt_ids):, None]).sum())


async def load(url: str, conversations: list[list[dict]], concurrency: int) -> tuple[list[str | None], list[float],
                                                                                      float, list[str | None]]:
    """Answers (None: failed), per-request latencies in ms, seconds, and which model answered each."""
    answers: list[str | None] = [None] * len(conversations)
    models: list[str | None] = [None] * len(conversations)
    latencies: list[float] = []
    pending = iter(range(len(conversations)))

    async def caller(session: aiohttp.ClientSession) -> None:
        for i in pending:
            began = time.perf_counter()
            body = {"model": "frontier-standin", "messages": conversations[i], "max_tokens": 64, "user": f"c{i}"}
            try:
                async with session.post(f"{url}/chat/completions", json=body,
                                        headers={"X-Distillery-Workload": WORKLOAD}) as response:
                    payload = await response.json()
                answers[i], models[i] = payload["choices"][0]["message"]["content"], payload["model"]
            except (aiohttp.ClientError, KeyError, ValueError):
                pass
            latencies.append((time.perf_counter() - began) * 1000)

    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(caller(session) for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return answers, latencies, seconds, models


def percentile(values: list[float], q: int) -> float:
    return round(statistics.quantiles(values, n=100)[q - 1], 1) if len(values) > 1 else round(values[0], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["local", "vllm"], default="local")
    parser.add_argument("--rows", type=int, default=0, help="requests per concurrency level; default 256 local, "
                        "48 vllm (held-out rows repeated)")
    parser.add_argument("--adapter", type=Path, help="an adapter folder of the artifact store "
                        "(<root>/<workload>/lora_adapter/<version>/adapter); default: the latest demo adapter")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--batch-size", type=int, default=32, help="the evaluation engine's batch size")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the 16-concurrent load and the "
                        "evaluation baseline; their medians are compared")
    parser.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    parser.add_argument("--vllm-args", default="--dtype float32 --max-model-len 2048",
                        help="extra vLLM server flags (the default suits CPUs)")
    parser.add_argument("--quick", action="store_true", help="seconds, on a tiny model: what the tests run")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.concurrency, args.rounds = 16, "1,4", 1
        adapter, test = quick_adapter(Path(tempfile.mkdtemp(prefix="serving-quick-")))
    else:
        adapter = (args.adapter or demo_adapter()).resolve()
        test = held_out_rows(adapter)
    levels = [int(c) for c in args.concurrency.split(",")]
    rows = args.rows or (256 if args.backend == "local" else 48)
    policy = DecodingPolicy.load(adapter)
    if policy is None:
        sys.exit(f"{adapter} has no decoding_policy.json: deploy needs the policy it was evaluated under")
    base_model = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    conversations = [test[i % len(test)] for i in range(rows)]

    model, tokenizer = load_model(base_model, {"adapter": adapter})

    def evaluate_rows() -> tuple[list[str], float]:
        """The evaluation engine on the same rows: its answers and rows/s."""
        started = time.perf_counter()
        texts = [g.text for g in generate(model, tokenizer, conversations, max_new_tokens=64,
                                          batch_size=args.batch_size, policy=policy)]
        return texts, rows / (time.perf_counter() - started)

    evaluated, first_eval = evaluate_rows()
    eval_rates = [first_eval]

    # vLLM on CPUs: a fixed KV cache (GiB) instead of a share of the machine's memory, which it refuses to start
    # without when this process already holds a model.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    workdir = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    env = {**os.environ, "DISTILLERY_HOME": str(workdir), "PYTHONPATH": str(ROOT)}
    endpoints = Endpoints(workdir / "endpoints", backend=args.backend, max_lora_rank=64,
                          vllm_python=args.vllm_python, vllm_args=args.vllm_args.split())
    standin = start_frontier_standin()
    gateway = None
    figures: dict = {"backend": args.backend, "rows": rows, "policy": policy.kind}
    served_answers: list[str | None] = []
    fallbacks: dict[str, int] = {}
    try:
        endpoint = endpoints.deploy(WORKLOAD, base_model, adapter, f"{WORKLOAD}-bench", conversations[0], policy)
        store = LogStore(f"sqlite:///{workdir / 'logs.db'}")
        store.upgrade()
        route = Route(WORKLOAD, SMALL, 0, endpoint.url, endpoint.model, policy, small_api=endpoint.api)
        RouteStore(store.engine).set(route, "benchmark")
        port = 20000 + os.getpid() % 20000
        # The load queues requests far past production latency targets on purpose: no rollback, no small-model timeout.
        config = workdir / "gateway.toml"
        config.write_text(f"""[gateway]
port = {port}
require_api_key = false
small_timeout_s = 600
log_store_url = "{store.url}"
[upstreams.frontier]
base_url = "{standin.url}"
[rollback]
max_p95_latency_ms = 3600000
""")
        # one process: the figures since 2026-12 were measured on one (--workers: benchmarks/gateway.py)
        gateway = subprocess.Popen([sys.executable, "-m", "distillery.cli", "gateway", "--config", str(config),
                                    "--workers", "1"],
                                   env=env, stdout=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}/v1"
        wait_until_up(f"http://127.0.0.1:{port}/healthz", gateway)
        time.sleep(1.5)  # the gateway reads routes every second
        for concurrency in levels:
            sent = conversations if concurrency > 1 else conversations[: min(rows, 64)]
            rounds = []
            for round_ in range(args.rounds if concurrency == 16 else 1):
                if round_:
                    eval_rates.append(evaluate_rows()[1])
                rounds.append(asyncio.run(load(url, sent, concurrency)))
            answers, latencies, seconds, models = sorted(rounds, key=lambda r: r[2])[len(rounds) // 2]  # median
            figures[f"served_rps_c{concurrency}"] = round(len(sent) / seconds, 2)
            figures[f"p50_ms_c{concurrency}"] = percentile(latencies, 50)
            figures[f"p95_ms_c{concurrency}"] = percentile(latencies, 95)
            figures[f"not_served_by_the_adapter_c{concurrency}"] = sum(m != endpoint.model for m in models)
            if concurrency == 16 or concurrency == levels[-1] or not served_answers:
                served_answers = answers
            print(json.dumps({"concurrency": concurrency, "requests": len(sent),
                              "rps": [round(len(sent) / r[2], 2) for r in rounds]}), file=sys.stderr, flush=True)
        for params in store.read(WORKLOAD)["request_params"]:
            if isinstance(params, dict) and "distillery_fallback" in params:
                reason = params["distillery_fallback"][:80]
                fallbacks[reason] = fallbacks.get(reason, 0) + 1
    finally:
        if gateway:
            gateway.terminate()
            gateway.wait(30)
        endpoints.stop(WORKLOAD)
        standin.shutdown()

    figures["eval_rows_per_s"] = round(statistics.median(eval_rates), 2)
    figures["eval_rows_per_s_runs"] = [round(rate, 2) for rate in eval_rates]
    if "served_rps_c16" in figures:
        figures["served_vs_eval"] = round(figures["served_rps_c16"] / figures["eval_rows_per_s"], 3)
    if "served_rps_c1" in figures and "served_rps_c16" in figures:
        figures["c16_vs_c1"] = round(figures["served_rps_c16"] / figures["served_rps_c1"], 2)
    figures["fallback_reasons"] = fallbacks
    differences = []
    with torch.no_grad():
        for i, (evaluated_answer, served) in enumerate(zip(evaluated, served_answers)):
            if served is not None and served != evaluated_answer:
                gap = answer_logprob(model, tokenizer, conversations[i], evaluated_answer) - answer_logprob(
                    model, tokenizer, conversations[i], served)
                differences.append({"row": i % len(test), "evaluated": evaluated_answer, "served": served,
                                    "logprob_gap_nats": round(gap, 4),
                                    "explained": "near-tie" if abs(gap) < NEAR_TIE_NATS else "NOT a near-tie"})
    compared = sum(a is not None for a in served_answers)
    figures["answers_match_eval"] = round((compared - len(differences)) / compared, 4) if compared else 0.0
    figures["differences"] = differences
    figures["quick"] = args.quick
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
