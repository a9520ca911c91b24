"""The `distillery` command line."""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path
from typing import Optional

import typer

from distillery import settings

DEMO_MIN_ROWS = 100  # the demo's evidence minimums (the gate's defaults: 200 test rows, 100 validation rows)

app = typer.Typer(help="Distillery: move narrow frontier-LLM workloads onto small fine-tuned models.",
                  no_args_is_help=True, add_completion=False)
endpoints_app = typer.Typer(help="Local model-server endpoints started by deployed_endpoint.", no_args_is_help=True)
db_app = typer.Typer(help="The log store's schema.", no_args_is_help=True)
keys_app = typer.Typer(help="Gateway API keys (stored hashed; the plain key is shown once).", no_args_is_help=True)
logs_app = typer.Typer(help="Import existing logs into the log store, or export a workload.", no_args_is_help=True)
route_app = typer.Typer(help="Which model answers a workload's calls at the gateway: frontier, shadow, canary, small.",
                        no_args_is_help=True)
app.add_typer(endpoints_app, name="endpoints")
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(logs_app, name="logs")
app.add_typer(route_app, name="route")


def _say(text: str) -> None:
    typer.secho(text, fg=typer.colors.CYAN, bold=True)


def _run_lifecycle(workload: str, epochs: float | None, gate: dict | None = None,
                   curation: dict | None = None) -> None:
    """Run the lifecycle job, print the outcome (the evaluation report, if one was made), exit 1 if the run failed."""
    # Set before the job's libraries are imported; the training worker inherits them. Per-shard and per-tensor
    # progress bars would bury the lifecycle's own progress lines.
    for name, value in {"HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
                        "PYTHONWARNINGS": "ignore::FutureWarning", "HF_HUB_OFFLINE": "1"}.items():
        os.environ.setdefault(name, value)
    warnings.filterwarnings("ignore", category=FutureWarning)
    from pipelines.run import run_lifecycle  # the CLI's one entry into Dagster

    succeeded = run_lifecycle(workload, epochs=epochs, gate=gate, curation=curation, say=typer.echo)
    _print_outcome(workload)
    if not succeeded:
        typer.secho(f"the lifecycle run for {workload!r} failed; see the messages above", fg="red", err=True)
        raise typer.Exit(1)


@app.command()
def demo(
    calls: int = typer.Option(1000, help="How many demo tickets to send through the frontier."),
    frontier_url: Optional[str] = typer.Option(
        None, envvar="DISTILLERY_FRONTIER_URL",
        help="OpenAI-compatible base URL of a real provider (key from OPENAI_API_KEY). Default: the local stand-in."),
    frontier_model: str = typer.Option("gpt-4o-mini", help="Model name to ask a real provider for."),
    epochs: Optional[float] = typer.Option(None, help="Override the fine-tune's epochs."),
    concurrency: int = typer.Option(8, help="Parallel demo calls."),
    # The demo's model trains for a few minutes on CPU on 600 calls; a real workload keeps the gate's default of 5.
    max_gap_points: float = typer.Option(10.0, help="The gate's allowed gap to the frontier, in points."),
) -> None:
    """Capture demo traffic, run the whole lifecycle on it (curate, fine-tune, evaluate, deploy), move the
    workload's traffic to the small model step by step and force a fault that rolls it back; then show the fleet
    (two more call sites captured beside it) ranked by what moving each would save."""
    from tqdm import tqdm

    from distillery.demo import (EXTRACTION_WORKLOAD, REPLY_WORKLOAD, ROUTER_TOOLS, STANDIN_MODEL, TOOL_WORKLOAD,
                                 WORKLOAD, extraction_messages, reply_messages, send_demo_traffic, tool_messages,
                                 walk_cutover)

    if frontier_url:
        model, api_key_env = frontier_model, "OPENAI_API_KEY"
        _say(f"1/5 Frontier: {frontier_url} (model {model})")
    else:
        model, api_key_env = STANDIN_MODEL, None
        _say("1/5 Frontier STAND-IN on loopback: keyword rules posing as a frontier model "
             "(no frontier API on this machine; pass --frontier-url for a real one)")
    _say(f"2/5 Sending {calls} support tickets through the gateway (workload {WORKLOAD!r})")
    with tqdm(total=calls, desc="demo calls", unit="call") as bar:
        traffic = send_demo_traffic(calls, frontier_url=frontier_url, model=model, api_key_env=api_key_env,
                                    concurrency=concurrency, on_call=bar.update)
    typer.echo(f"{traffic.calls} calls ({traffic.failed} failed) via {traffic.gateway_url}: {traffic.written} rows "
               f"written to {traffic.log_store_url}, {traffic.journaled} journaled")
    # Three more call sites of the same company, at other volumes and (stand-in) prices, one of them answered with
    # function calls: the fleet of step 5.
    for workload, messages, volume, tier, max_tokens, tools in [
            (EXTRACTION_WORKLOAD, extraction_messages, 600, "-large", 40, None),
            (REPLY_WORKLOAD, reply_messages, 150, "-mini", 60, None),
            (TOOL_WORKLOAD, tool_messages, 400, "", 40, ROUTER_TOOLS)]:
        fleet = send_demo_traffic(volume, frontier_url=frontier_url, model=model if frontier_url else model + tier,
                                  api_key_env=api_key_env, concurrency=concurrency, workload=workload,
                                  messages=messages, max_tokens=max_tokens, seed=len(workload), tools=tools)
        typer.echo(f"  and {fleet.calls} calls ({fleet.failed} failed) of workload {workload!r}")

    _say(f"3/5 Running the lifecycle for {WORKLOAD!r} in Dagster: "
         "raw_llm_logs -> curated_dataset -> lora_adapter -> eval_report -> deployed_endpoint")
    # A demo's thousand calls leave few held-out rows: a fifth each for validation (the cascade's calibration) and
    # test, and the test minimum lowered to fit (the report's gate says so).
    _run_lifecycle(WORKLOAD, epochs, {"max_gap_to_frontier_points": max_gap_points, "min_test_rows": DEMO_MIN_ROWS,
                                      "min_calibration_rows": DEMO_MIN_ROWS},
                   {"validation_fraction": 0.2, "test_fraction": 0.2})
    _say("4/5 Cut-over through the gateway: shadow, canary, small model, then a forced fault")
    walk_cutover(frontier_url=frontier_url, model=model, api_key_env=api_key_env, say=typer.echo)
    typer.echo("  routes and their history: .venv/bin/distillery route show")
    typer.echo(f"  walk a route by itself on live agreement: .venv/bin/distillery route auto {WORKLOAD} on")
    _say("5/5 The fleet: every workload in the log store, ranked by what moving it to a small model saves")
    portfolio(as_json=False, threshold=3000.0)


def _print_outcome(workload: str) -> None:
    from distillery.serving import Endpoints
    from distillery.store import ArtifactStore

    reports = ArtifactStore()
    if not reports.versions(workload, "eval_report"):
        return
    report = reports.latest(workload, "eval_report")
    _say("Evaluation on the held-out test split")
    typer.echo((report.path / "report.md").read_text())
    endpoint = Endpoints().current(workload)
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
def run(
    workload: str,
    epochs: Optional[float] = typer.Option(None, help="Override the fine-tune's epochs."),
    max_gap_points: Optional[float] = typer.Option(None, help="Override the gate's allowed gap to the frontier."),
) -> None:
    """Run the whole lifecycle for one workload already in the log store."""
    settings.validate_workload(workload)
    _run_lifecycle(workload, epochs, None if max_gap_points is None else {"max_gap_to_frontier_points": max_gap_points})


@app.command()
def standin(host: str = "127.0.0.1", port: int = 8100) -> None:
    """Serve the frontier STAND-IN (deterministic keyword routing, not an LLM) in the foreground."""
    from distillery.demo import start_frontier_standin

    server = start_frontier_standin(host, port)
    typer.echo(f"frontier stand-in (not a real LLM) on {server.url}; Ctrl-C stops it")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.shutdown()


@endpoints_app.command("list")
def endpoints_list() -> None:
    """Running endpoints, one a line."""
    from distillery.serving import Endpoints

    for endpoint in Endpoints().all():
        typer.echo(f"{endpoint.workload}\t{endpoint.url}\tmodel={endpoint.model}\tpid={endpoint.pid}")


@endpoints_app.command("stop")
def endpoints_stop(workload: str) -> None:
    """Stop a workload's endpoint."""
    from distillery.serving import Endpoints

    stopped = Endpoints().stop(workload)
    typer.echo(f"stopped {workload}" if stopped else f"no endpoint is running for {workload}")


@endpoints_app.command("unload")
def endpoints_unload(workload: str,
                     version: str = typer.Argument(..., help="Its served name, e.g. support-triage-v1.")) -> None:
    """Take an old adapter version off the workload's model server (the version it serves now stays)."""
    from distillery.errors import DistilleryError
    from distillery.serving import Endpoints

    try:
        Endpoints().unload(workload, version)
    except DistilleryError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"unloaded {version}")


@app.command()
def gateway(
    config: Optional[Path] = typer.Option(None, help="Gateway TOML file (see gateway.example.toml)."),
    upstream: Optional[str] = typer.Option(None, help="Without --config: the one upstream's base URL."),
    upstream_key_env: str = typer.Option("OPENAI_API_KEY", help="Without --config: env var with its key."),
    host: Optional[str] = typer.Option(None),
    port: Optional[int] = typer.Option(None),
    require_api_key: Optional[bool] = typer.Option(None, help="Refuse callers without a gateway key."),
    workers: Optional[int] = typer.Option(None, help="Processes accepting on the port (default: the [gateway] "
                                          "setting, else one per core); 1: this process alone."),
) -> None:
    """Run the OpenAI-compatible gateway in the foreground."""
    import dataclasses

    from distillery.errors import DistilleryError
    from distillery.gateway import GatewayConfig, load_config, serve_forever

    overrides = {name: value for name, value in (("host", host), ("port", port), ("require_api_key", require_api_key),
                                                 ("workers", workers)) if value is not None}
    try:
        if config:
            settings_ = load_config(config)
        elif upstream:
            settings_ = GatewayConfig.single(upstream, api_key_env=upstream_key_env)
        else:
            raise typer.BadParameter("pass --config FILE or --upstream URL")
        settings_ = dataclasses.replace(settings_, **overrides)  # checked as the file's settings are
        typer.echo(f"gateway on http://{settings_.host}:{settings_.port}/v1 -> "
                   + ", ".join(f"{u.name}: {u.base_url}" for u in settings_.upstreams.values()))
        serve_forever(settings_)
    except DistilleryError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from exc


def _store(url: str | None = None):
    """The configured log store (or ``url``), migrated to the newest revision."""
    from distillery.store import LogStore

    store = LogStore(url)
    store.upgrade()
    return store


@keys_app.command("create")
def keys_create(
    name: str,
    workload: list[str] = typer.Option([], help="A workload the key may write to (repeat for more); the first is "
                                       "the default of its calls, a header or metadata.workload picks another."),
    all_workloads: bool = typer.Option(False, "--all-workloads", help="May write to any workload: for trusted "
                                       "importers and admins."),
) -> None:
    """Create a key and print it (once)."""
    from distillery.gateway import KeyStore

    if not workload and not all_workloads:
        typer.echo("give the key a scope: --workload NAME (repeatable) or --all-workloads", err=True)
        raise typer.Exit(2)
    typer.echo(KeyStore(_store()).create(name, workload, all_workloads=all_workloads))


@keys_app.command("list")
def keys_list() -> None:
    from distillery.gateway import KeyStore

    for key in KeyStore(_store()).list():
        state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
        typer.echo(f"{key.name}\tscope={key.scope}\t{state}")


@keys_app.command("revoke")
def keys_revoke(name: str) -> None:
    from distillery.gateway import KeyStore

    revoked = KeyStore(_store()).revoke(name)
    typer.echo(f"revoked {name}" if revoked else f"no active key named {name}")
    if not revoked:
        raise typer.Exit(1)


@logs_app.command("import")
def logs_import(
    path: Path,
    workload: str = typer.Option(..., help="Workload the rows belong to."),
    fmt: str = typer.Option("finetune", "--format",
                            help="finetune (messages JSONL), batch (Batch API output), openai-chat (stored chat "
                            "completions JSONL), jsonl or csv (with --prompt-field/--answer-field), dstc8 (slot spans)."),
    prompt_field: str = typer.Option("text", help="jsonl, csv: the user message's field (a dotted path into JSONL "
                                     "records, e.g. input.text) or column."),
    answer_field: str = typer.Option("label", help="jsonl, csv: the answer's field or column (e.g. "
                                     "output.choices.0.text)."),
    system_prompt: Optional[str] = typer.Option(None, help="jsonl, csv: system message to put before each prompt."),
    requests: Optional[Path] = typer.Option(None, help="Batch: the input JSONL, to recover request messages."),
    strict: bool = typer.Option(False, "--strict", help="Fail on any bad record, importing nothing."),
) -> None:
    """Import logs; re-importing the same file adds nothing. Bad records are summarized by cause."""
    from distillery.capture import import_logs
    from distillery.errors import DistilleryError

    try:
        result = import_logs(_store(), path, workload, fmt, prompt_field=prompt_field, answer_field=answer_field,
                             system_prompt=system_prompt, requests_path=requests, strict=strict)
    except DistilleryError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"read {result.read}, imported {result.imported}, already stored {result.already_stored}, "
               f"skipped {len(result.skipped)}")
    for cause, count, where in result.by_cause():
        typer.echo(f"  skipped {count}: {cause} (first: {', '.join(where)})", err=True)


@logs_app.command("export")
def logs_export(workload: str, path: Path) -> None:
    """Write a workload's successful exchanges as OpenAI fine-tuning JSONL."""
    from distillery.capture import export_finetune_jsonl

    typer.echo(f"wrote {export_finetune_jsonl(_store(), workload, path)} examples to {path}")


@app.command()
def portfolio(
    as_json: bool = typer.Option(False, "--json", help="End with one line of JSON: a list, one object per workload."),
    threshold: float = typer.Option(3000.0, help="Recommend only above this projected frontier spend per month."),
) -> None:
    """Every workload in the log store ranked by projected saving: volume, frontier spend, task, route stage,
    realized saving, and which to move to a small model next (the workload_portfolio asset's table)."""
    import json

    from distillery.fleet import PortfolioSettings, build_portfolio, portfolio_records, portfolio_text
    from distillery.store import ArtifactStore

    lines = build_portfolio(_store(), ArtifactStore(), PortfolioSettings(recommend_above_usd_per_month=threshold))
    if not lines:
        typer.echo("no workloads in the log store yet")
    else:
        typer.echo(portfolio_text(lines))
    if as_json:
        typer.echo(json.dumps(portfolio_records(lines)))


def _routes():
    from distillery.routing import RouteStore

    return RouteStore(_store().engine)


def _autopilot_policy(config: Path | None):
    from distillery.errors import DistilleryError
    from distillery.gateway import load_config
    from distillery.routing import AutopilotPolicy

    try:
        return load_config(config).autopilot if config else AutopilotPolicy()
    except DistilleryError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from exc


_GATEWAY_CONFIG = typer.Option(None, "--config", help="The gateway's TOML file, for its [autopilot] table; default: "
                               "the default stages, dwell times and delta.")


@route_app.command("show")
def route_show(workload: Optional[str] = typer.Argument(None, help="One workload; default: all with a route."),
               config: Optional[Path] = _GATEWAY_CONFIG) -> None:
    """Each workload's route, its autopilot (the stage, the evidence so far, what would trigger the next decision)
    and its latest changes with the evidence they were made on."""
    import datetime as dt

    routes = _routes()
    policy = _autopilot_policy(config)
    states = routes.states()
    now = dt.datetime.now(dt.timezone.utc)
    for name in sorted([workload] if workload else states):
        state = states.get(name)
        route = state.route if state else None
        target = f"{route.small_model} at {route.small_url}" if route and route.small_url else "-"
        typer.echo(f"{name}\t{route.label if route else 'frontier (no route)'}\tsmall model: {target}")
        if route is None or not (route.autopilot or route.approval):
            continue
        evidence = state.evidence
        if route.autopilot and route.approval:
            sound, worse = policy.hypotheses(route.approval)
            agreement = f"agreement {evidence.agreement:.1%}" if evidence.calls else "no agreement yet"
            typer.echo(f"  autopilot on: {route.label} since {state.since.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC; "
                       f"{evidence.calls} compared calls, {agreement} (sound: {sound:.1%} as evaluated, worse: "
                       f"{worse:.1%}), log-likelihood ratio {evidence.llr:+.2f}")
        typer.echo(f"  {policy.outlook(route, evidence, state.since, now)}")
    for event in routes.events(workload, limit=10):
        typer.echo(f"  {event.created_at:%Y-%m-%d %H:%M:%S} {event.workload} {event.kind}: "
                   f"{event.from_mode or '-'} -> {event.to_mode} ({event.reason})")
        if event.evidence:
            typer.echo("      evidence: " + ", ".join(f"{key} {value}" for key, value in event.evidence.items()
                                                      if value is not None))


@route_app.command("auto")
def route_auto(workload: str, switch: str = typer.Argument(..., help="on or off."),
               config: Optional[Path] = _GATEWAY_CONFIG) -> None:
    """Turn a workload's autopilot on (the route walks shadow -> canary -> small by itself while live agreement with
    the frontier holds what evaluation measured, and steps back when it does not) or off (it stays where it is)."""
    from dataclasses import replace

    if switch not in ("on", "off"):
        raise typer.BadParameter("on or off")
    routes = _routes()
    current = routes.get(settings.validate_workload(workload))
    try:
        if switch == "on":
            route = _autopilot_policy(config).switched_on(current, workload)
        elif current is None:
            raise ValueError(f"workload {workload!r} has no route")
        else:
            route = replace(current, autopilot=False)
    except ValueError as exc:
        typer.secho(f"autopilot refused: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    routes.set(route, f"autopilot {switch} from the command line", kind="autopilot")
    typer.echo(f"{workload}: {route.label}, autopilot {switch}")


@route_app.command("back")
def route_back(workload: str,
               reason: str = typer.Option("a person's decision", help="Why, recorded with the route event."),
               config: Optional[Path] = _GATEWAY_CONFIG) -> None:
    """Step a workload's route back one stage of the rollout, by the rule the gateway's rollback and live monitoring
    follow (small -> canary 50% -> canary 10% -> shadow -> frontier with the default stages); recorded as a rollback.
    An autopilot stays on (it goes on from the stage below), as after an automatic step back."""
    from distillery.routing import FRONTIER, step_back

    routes = _routes()
    current = routes.get(settings.validate_workload(workload))
    if current is None or current.mode == FRONTIER:
        typer.secho(f"workload {workload!r} is on the frontier already: nothing to step back", fg="red", err=True)
        raise typer.Exit(2)
    route = routes.set(step_back(current, _autopilot_policy(config)), f"from the command line: {reason}",
                       kind="rollback")
    typer.echo(f"{workload}: {current.label} -> {route.label}")


@route_app.command("set")
def route_set(
    workload: str,
    mode: str = typer.Argument(..., help="frontier, shadow, canary or small."),
    percent: float = typer.Option(0.0, help="canary: the share of callers (0-100) the small model answers."),
    url: Optional[str] = typer.Option(None, help="The small model's OpenAI base URL; default: the current one."),
    model: Optional[str] = typer.Option(None, help="The model name to ask it for; default: the current one."),
    api: Optional[str] = typer.Option(None, help="How to ask it: chat (chat completions) or classify (vLLM's classify "
                                      "route, a classifier served by vLLM); default: the current one, else chat."),
    threshold: Optional[float] = typer.Option(
        None, help="Cascade: the small model answers a call alone at this confidence or above (0-1); default: the "
        "current route's (the one the gate chose)."),
    no_cascade: bool = typer.Option(False, "--no-cascade", help="The small model answers every call it takes."),
) -> None:
    """Move a workload's traffic and pin it there (its autopilot, if on, turns off); running gateways pick it up
    within a second."""
    from distillery.routing import Route
    from distillery.wire import CHAT_API
    from distillery.tasks import Cascade, DecodingPolicy, confidence_measures

    routes = _routes()
    current = routes.get(settings.validate_workload(workload))
    policy = current.policy if current else DecodingPolicy()
    cascade = current.cascade if current else None
    try:
        if no_cascade:
            cascade = None
        elif threshold is not None:
            cascade = Cascade(
                threshold, cascade.measure if cascade else confidence_measures(policy)[0],
                cascade.coverage if cascade else None)
        route = Route(workload, mode, percent, url or (current.small_url if current else None),
                      model or (current.small_model if current else None), policy, cascade,
                      approval=current.approval if current else None,
                      small_api=api or (current.small_api if current else CHAT_API))
    except ValueError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from exc
    pinned = current is not None and current.autopilot
    routes.set(route, "set from the command line" + ("; pinned: autopilot off" if pinned else ""))
    typer.echo(f"{workload}: {route.label}" + (" (pinned: autopilot off until `route auto on`)" if pinned else ""))


@db_app.command("upgrade")
def db_upgrade(url: Optional[str] = typer.Option(None, help="SQLAlchemy URL; default: the configured log store.")) -> None:
    """Create or migrate the log store schema to the newest revision."""
    store = _store(url)
    typer.echo(f"log store at {store.url} is at the newest revision")


if __name__ == "__main__":
    app()
