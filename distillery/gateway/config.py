"""Gateway configuration: upstream providers, their prices, and the recording settings (a TOML file).

API keys of upstreams are never in the file: each upstream names the environment variable
that holds its key, read when the gateway starts.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distillery.errors import DistilleryError
from distillery.pricing import Price
from distillery.routing import AutopilotPolicy, RollbackPolicy
from distillery.settings import home


WORKERS_PER_CORE = 4  # a worker is busy on the CPU: past a few per core more of them only take turns


def available_cores() -> int:
    return len(os.sched_getaffinity(0))


def check_workers(workers: int) -> None:
    allowed = WORKERS_PER_CORE * available_cores()
    if not 1 <= workers <= allowed:
        raise DistilleryError(f"workers must be between 1 and {allowed} ({WORKERS_PER_CORE} per core on this machine's "
                              f"{available_cores()}): each worker keeps a core busy under load, so more only take "
                              f"turns; got {workers}")


UPSTREAM_KINDS = ("openai", "anthropic")  # an OpenAI-compatible API (chat, completions, Responses), or Anthropic's


@dataclass
class Upstream:
    name: str
    base_url: str
    api_key_env: str | None = None
    models: dict[str, Price] = field(default_factory=dict)
    kind: str = "openai"

    def __post_init__(self) -> None:
        if self.kind not in UPSTREAM_KINDS:
            raise DistilleryError(f"upstream {self.name!r}: unknown kind {self.kind!r}; use one of "
                                  f"{', '.join(UPSTREAM_KINDS)}")

    @property
    def api_key(self) -> str:
        return os.environ.get(self.api_key_env, "") if self.api_key_env else ""


@dataclass
class GatewayConfig:
    upstreams: dict[str, Upstream]
    default_upstream: str
    host: str = "127.0.0.1"
    port: int = 8080
    # processes accepting on the port (distillery.gateway.workers); 1: this process alone
    workers: int = field(default_factory=available_cores)
    max_body_bytes: int = 1 << 20
    require_api_key: bool = True
    upstream_timeout_s: float = 60.0  # connecting to the provider and its first byte (a whole non-streamed answer)
    stream_idle_timeout_s: float = 60.0  # between two chunks of a stream; a long stream is never cut for its length
    head_timeout_s: float = 10.0  # a caller's request head, from its connection (or its first byte) to its end
    body_timeout_s: float = 30.0  # a caller's request body, after its head
    keep_alive_s: float = 75.0  # an idle keep-alive connection
    max_connections: int = 4096  # past it a new connection gets 503 and is closed
    key_cache_size: int = 10_000  # gateway keys looked up (known or not), least recently used dropped first
    key_cache_ttl_s: float = 5.0  # so a revoked key stops working within this
    batch_size: int = 2000  # rows per transaction of the log store
    # How often the writer stores the journal's new rows (and fsyncs it). Larger batches cost the writer less CPU a row
    # (benchmarks/gateway.py, 2026-12-02, 64 concurrent: 25.5 µs a row every 0.05 s, 18 every 0.5 s, 12.5 every 1 s).
    flush_interval_s: float = 1.0
    retry_interval_s: float = 1.0  # how often a log store that is down is tried again
    # one per gateway; its workers each have their own under <journal_path>.workers/
    journal_path: Path = field(default_factory=lambda: home() / "gateway-journal.jsonl")
    log_store_url: str | None = None
    route_refresh_s: float = 1.0  # how stale a route changed in the database (CLI, deploy) may be
    small_timeout_s: float = 10.0  # then the caller gets the frontier's answer
    # Cascade routes: the share (in percent) of the calls the small model answers alone that the frontier also answers,
    # off the caller's path, so agreement on the covered calls keeps being measured live.
    audit_percent: float = 5.0
    rollback: RollbackPolicy = field(default_factory=RollbackPolicy)
    autopilot: AutopilotPolicy = field(default_factory=AutopilotPolicy)  # routes whose autopilot is on

    def upstream_for(self, model: Any, kind: str = "openai") -> Upstream | None:
        """The upstream that lists ``model`` when it is of ``kind``, else the default upstream of that kind (the
        configured default for openai, the first listed for anthropic); None when there is no upstream of that kind."""
        upstream = self._model_upstreams.get(model) if isinstance(model, str) else None
        if upstream is not None and upstream.kind == kind:
            return upstream
        return self._default_upstreams.get(kind)

    @functools.cached_property
    def _default_upstreams(self) -> dict[str, Upstream]:
        defaults = {upstream.kind: upstream for upstream in reversed(self.upstreams.values())}
        default = self.upstreams[self.default_upstream]
        return {**defaults, default.kind: default}

    def __post_init__(self) -> None:
        check_workers(self.workers)
        if not 0 <= self.audit_percent <= 100:
            raise DistilleryError(f"gateway setting audit_percent must be between 0 and 100, got {self.audit_percent}")

    def check_keys(self) -> None:
        """At start: an Anthropic upstream cannot be called without its key, so a missing one stops the gateway,
        naming its variable (an OpenAI-compatible upstream may need none: a local server)."""
        for upstream in self.upstreams.values():
            if upstream.kind == "anthropic" and not upstream.api_key:
                raise DistilleryError(
                    f"upstream {upstream.name!r} (anthropic) needs its API key: "
                    + (f"set the environment variable {upstream.api_key_env}" if upstream.api_key_env
                       else "name the environment variable that holds it in api_key_env"))

    def price_for(self, model: Any) -> Price | None:
        upstream = self._model_upstreams.get(model) if isinstance(model, str) else None
        return upstream.models[model] if upstream else None

    @functools.cached_property
    def _model_upstreams(self) -> dict[str, Upstream]:
        """Each priced model's upstream (the first that lists it), looked up once instead of per call."""
        return {model: upstream for upstream in reversed(self.upstreams.values()) for model in upstream.models}

    @classmethod
    def single(cls, base_url: str, **settings) -> "GatewayConfig":
        """One upstream, every model priced at zero unless ``models`` is given."""
        models = settings.pop("models", {})
        upstream = Upstream("default", base_url.rstrip("/"), settings.pop("api_key_env", None), models)
        return cls(upstreams={"default": upstream}, default_upstream="default", **settings)


def load_config(path: Path) -> GatewayConfig:
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DistilleryError(f"cannot read gateway config {path}: {exc}") from exc
    upstreams: dict[str, Upstream] = {}
    default = None
    for name, spec in raw.get("upstreams", {}).items():
        if "base_url" not in spec:
            raise DistilleryError(f"gateway config {path}: upstream {name!r} needs a base_url")
        models = {m: Price(float(p.get("input_per_million", 0)), float(p.get("output_per_million", 0)))
                  for m, p in spec.get("models", {}).items()}
        upstreams[name] = Upstream(name, spec["base_url"].rstrip("/"), spec.get("api_key_env"), models,
                                   spec.get("kind", "openai"))
        if spec.get("default"):
            default = name
    if not upstreams:
        raise DistilleryError(f"gateway config {path}: define at least one [upstreams.NAME] with a base_url")
    settings = dict(raw.get("gateway", {}))
    known = {f.name for f in dataclasses.fields(GatewayConfig)} - {"upstreams", "default_upstream", "rollback",
                                                                   "autopilot"}
    if unknown := sorted(set(settings) - known):
        raise DistilleryError(f"gateway config {path}: unknown [gateway] setting(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(known))}")
    if "journal_path" in settings:
        settings["journal_path"] = Path(settings["journal_path"])
    for table, policy in (("rollback", RollbackPolicy), ("autopilot", AutopilotPolicy)):
        if table in raw:
            settings[table] = _policy_table(path, table, policy, raw[table])
    return GatewayConfig(upstreams=upstreams, default_upstream=default or next(iter(upstreams)), **settings)


def _policy_table(path: Path, table: str, policy: type, values: dict) -> Any:
    """A ``[table]`` of the file as its policy dataclass; unknown settings and out-of-range values refused, named."""
    known = {f.name for f in dataclasses.fields(policy)}
    if unknown := sorted(set(values) - known):
        raise DistilleryError(f"gateway config {path}: unknown [{table}] setting(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(known))}")
    try:
        return policy(**values)
    except (TypeError, ValueError) as exc:
        raise DistilleryError(f"gateway config {path}: [{table}]: {exc}") from exc
