"""The `distillery` command line."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import typer

from distillery import settings

app = typer.Typer(help="Distillery: move narrow frontier-LLM workloads onto small fine-tuned models.",
                  no_args_is_help=True, add_completion=False)
endpoints_app = typer.Typer(help="Local model-server endpoints started by deployed_endpoint.", no_args_is_help=True)
db_app = typer.Typer(help="The log store's schema.", no_args_is_help=True)
app.add_typer(endpoints_app, name="endpoints")
app.add_typer(db_app, name="db")


def _say(text: str) -> None:
    typer.secho(text, fg=typer.colors.CYAN, bold=True)


def _lifecycle_env() -> dict[str, str]:
    dagster_home = settings.dagster_home()
    dagster_home.mkdir(parents=True, exist_ok=True)
    quiet = {  # per-shard and per-tensor progress bars would bury the lifecycle's own progress lines
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
        "PYTHONWARNINGS": "ignore::FutureWarning",
    }
    return {**quiet, **os.environ, "DAGSTER_HOME": str(dagster_home), "DISTILLERY_HOME": str(settings.home()),
            "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}


def _run_lifecycle(workload: str, extra: list[str]) -> None:
    command = [sys.executable, "-m", "pipelines.run", workload, *extra]
    if subprocess.run(command, env=_lifecycle_env()).returncode != 0:
        typer.secho(f"the lifecycle run for {workload!r} failed; see the messages above", fg="red", err=True)
        raise typer.Exit(1)


@app.command()
def demo(
    calls: int = typer.Option(400, help="How many demo tickets to send through the frontier."),
    frontier_url: Optional[str] = typer.Option(
        None, envvar="DISTILLERY_FRONTIER_URL",
        help="OpenAI-compatible base URL of a real provider (key from OPENAI_API_KEY). Default: the local stand-in."),
    frontier_model: str = typer.Option("gpt-4o-mini", help="Model name to ask a real provider for."),
    epochs: Optional[float] = typer.Option(None, help="Override the fine-tune's epochs."),
    concurrency: int = typer.Option(8, help="Parallel demo calls."),
) -> None:
    """Capture demo traffic, then run the whole lifecycle on it: curate, fine-tune, evaluate, deploy."""
    import openai
    from tqdm import tqdm

    from distillery.capture import capture
    from distillery.demo_workload import (STANDIN_MODEL, WORKLOAD, demo_messages, generate_tickets,
                                          start_frontier_standin)
    from distillery.logstore import LogStore

    standin = None
    if frontier_url:
        model, api_key = frontier_model, os.environ.get("OPENAI_API_KEY", "")
        _say(f"1/3 Frontier: {frontier_url} (model {model})")
    else:
        standin = start_frontier_standin()
        frontier_url, model, api_key = standin.url, STANDIN_MODEL, "stand-in"
        _say(f"1/3 Frontier STAND-IN at {frontier_url}: keyword rules posing as a frontier model "
             "(no frontier API on this machine; pass --frontier-url for a real one)")

    store = LogStore()
    store.upgrade()
    client = capture(openai.OpenAI(base_url=frontier_url, api_key=api_key, max_retries=2), store, WORKLOAD)
    _say(f"2/3 Sending {calls} support tickets for workload {WORKLOAD!r}, recording them in {store.url}")

    def send(ticket: str) -> None:
        client.chat.completions.create(model=model, messages=demo_messages(ticket), max_tokens=8, temperature=0)

    failures = 0
    with ThreadPoolExecutor(concurrency) as pool:
        for future in tqdm([pool.submit(send, t) for t in generate_tickets(calls)], desc="demo calls", unit="call"):
            try:
                future.result()
            except openai.APIError:
                failures += 1  # recorded as a failed exchange by capture(); curation drops it
    if standin:
        standin.shutdown()
    typer.echo(f"recorded {calls} exchanges ({failures} failed); the log store holds {store.workloads()[WORKLOAD]} "
               f"rows for {WORKLOAD!r}")

    _say(f"3/3 Running the lifecycle for {WORKLOAD!r} in Dagster: "
         "raw_llm_logs -> curated_dataset -> lora_adapter -> eval_report -> deployed_endpoint")
    _run_lifecycle(WORKLOAD, ["--epochs", str(epochs)] if epochs else [])
    _print_outcome(WORKLOAD)


def _print_outcome(workload: str) -> None:
    from distillery.artifacts import ArtifactStore
    from distillery.serving import LocalEndpoints

    report = ArtifactStore().latest(workload, "eval_report")
    _say("Evaluation on the held-out test split")
    typer.echo((report.path / "report.md").read_text())
    endpoint = LocalEndpoints().current(workload)
    if endpoint:
        _say(f"Endpoint: {endpoint.url} (model {endpoint.model!r}, pid {endpoint.pid})")
        typer.echo(f"  curl {endpoint.url}/chat/completions -H 'Content-Type: application/json' \\\n"
                   f"    -d '{{\"model\": \"{endpoint.model}\", \"messages\": [{{\"role\": \"user\", "
                   f"\"content\": \"I was charged twice this month\"}}]}}'")
        typer.echo("  stop it with: distillery endpoints stop " + workload)
    else:
        typer.secho("No endpoint is serving this workload: the adapter did not pass the gate.", fg="yellow")
    dagster_home = settings.dagster_home()
    _say("Look around")
    typer.echo(f"  Dagster UI: DAGSTER_HOME={dagster_home} dagster dev -w workspace.yaml")
    typer.echo(f"  MLflow UI:  mlflow ui --backend-store-uri {settings.default_mlflow_uri()} --port 5001")


@app.command()
def run(workload: str, epochs: Optional[float] = typer.Option(None, help="Override the fine-tune's epochs.")) -> None:
    """Run the whole lifecycle for one workload already in the log store."""
    settings.validate_workload(workload)
    _run_lifecycle(workload, ["--epochs", str(epochs)] if epochs else [])
    _print_outcome(workload)


@app.command()
def standin(host: str = "127.0.0.1", port: int = 8100) -> None:
    """Serve the frontier STAND-IN (deterministic keyword routing, not an LLM) in the foreground."""
    from distillery.demo_workload import start_frontier_standin

    server = start_frontier_standin(host, port)
    typer.echo(f"frontier stand-in (not a real LLM) on {server.url}; Ctrl-C stops it")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.shutdown()


@endpoints_app.command("list")
def endpoints_list() -> None:
    """Running endpoints, one a line."""
    from distillery.serving import LocalEndpoints

    for endpoint in LocalEndpoints().all():
        typer.echo(f"{endpoint.workload}\t{endpoint.url}\tmodel={endpoint.model}\tpid={endpoint.pid}")


@endpoints_app.command("stop")
def endpoints_stop(workload: str) -> None:
    """Stop a workload's endpoint."""
    from distillery.serving import LocalEndpoints

    stopped = LocalEndpoints().stop(workload)
    typer.echo(f"stopped {workload}" if stopped else f"no endpoint is running for {workload}")


@db_app.command("upgrade")
def db_upgrade(url: Optional[str] = typer.Option(None, help="SQLAlchemy URL; default: the configured log store.")) -> None:
    """Create or migrate the log store schema to the newest revision."""
    from distillery.logstore import LogStore

    store = LogStore(url)
    store.upgrade()
    typer.echo(f"log store at {store.url} is at the newest revision")


if __name__ == "__main__":
    app()
