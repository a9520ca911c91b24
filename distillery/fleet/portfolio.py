"""The fleet view: every workload in the log store, what it costs, what moving it saves, and which to move next.

Per workload, from the log store (aggregated in the database) and the artifact store:

- volume: the requests callers sent (shadow copies left out) over the span they were logged in (at least an
  hour), per day and scaled to a 30.4-day month;
- frontier spend: the mean cost the gateway logged per frontier answer, else the logged tokens at
  ``CostSettings.frontier_price``, times the monthly volume;
- task and answer variety: curation's ``infer_task`` on the frontier's newest answers, and the share of them
  that are distinct;
- stage: the gateway route (frontier, shadow, canary N%, small), and whether its autopilot walks it;
- champion: the newest version whose eval report passed its gate (the one deploy serves), with its headline
  figure; its report's serving-based price per request is the small model's price. Without one, the
  small model's price is ``small_usd_per_1k_estimate``;
- realized saving: small-model answers so far x (frontier price - small-model price); projected saving per
  month and payback of ``CostSettings.migration_cost_usd`` if all of it moved.

A workload is recommended when it is still on the frontier, its projected frontier spend is over the
threshold (default $3,000/month: below that an evaluation rarely pays back within a quarter), and its task
is narrow: classification, extraction, or free text whose answers mostly repeat.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field

import pandas as pd

from distillery.evaluation.costs import (DAYS_PER_MONTH, CostSettings, blended_usd_per_1k, frontier_usd_per_request,
                                        logged_rate)
from distillery.routing import FRONTIER, Route, RouteStore
from distillery.store import (SERVED_BY_AUDIT, SERVED_BY_FRONTIER, SERVED_BY_SHADOW, SERVED_BY_SMALL, STATUS_OK,
                              ArtifactStore, LogStore)
from distillery.tasks import CLASSIFICATION, EXTRACTION, FREE_TEXT, TOOL_CALL, tool_call_answer

REPORT = "eval_report"


@dataclass(frozen=True)
class PortfolioSettings:
    recommend_above_usd_per_month: float = 3000.0
    max_free_text_variety: float = 0.5  # free text is narrow when at most this share of its answers is distinct
    # $1/hour serving at the 5.56 requests/s the demo's small model served 16 concurrent callers with (docs/benchmarks.md).
    small_usd_per_1k_estimate: float = 0.05
    answer_sample: int = 2000  # the frontier's newest answers the task and variety are judged on
    costs: CostSettings = field(default_factory=CostSettings)


@dataclass
class WorkloadLine:
    workload: str
    requests_per_day: float
    requests_per_month: float
    frontier_usd_per_request: float | None
    frontier_usd_per_month: float | None
    frontier_price_basis: str
    task: str
    answer_variety: float | None  # distinct share of the frontier's newest answers
    stage: str
    autopilot: bool  # the route advances and steps back by itself (distillery.routing.autopilot)
    champion_version: str | None
    champion_figures: dict  # headline metric, its value, the gate's verdict
    small_usd_per_request: float
    small_price_basis: str
    small_answers: int
    realized_saving_usd: float
    projected_saving_usd_per_month: float | None
    payback_months: float | None
    recommended: bool
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def build_portfolio(store: LogStore, artifacts: ArtifactStore,
                    settings: PortfolioSettings = PortfolioSettings()) -> list[WorkloadLine]:
    """One line per workload in the log store, the largest projected saving first."""
    usage = store.usage()
    routes = RouteStore(store.engine).all()
    lines = [_line(name, rows, store, artifacts, routes.get(name), settings)
             for name, rows in usage.groupby("workload", sort=True)]
    return sorted(lines, key=lambda line: -(line.projected_saving_usd_per_month or float("-inf")))


def _line(workload: str, usage: pd.DataFrame, store: LogStore, artifacts: ArtifactStore, route: Route | None,
          settings: PortfolioSettings) -> WorkloadLine:
    callers = usage[~usage["served_by"].isin((SERVED_BY_SHADOW, SERVED_BY_AUDIT))]
    per_month, _ = logged_rate(int(callers["rows"].sum()), pd.to_datetime(callers["first_at"]).min(),
                               pd.to_datetime(callers["last_at"]).max())
    per_day = per_month / DAYS_PER_MONTH

    answered = usage[usage["status"] == STATUS_OK]
    frontier = answered[answered["served_by"] == SERVED_BY_FRONTIER]
    frontier_price, basis = _frontier_price(frontier, settings.costs)
    small_answers = int(answered.loc[answered["served_by"] == SERVED_BY_SMALL, "rows"].sum())

    sample = store.recent_answers(workload, settings.answer_sample)
    task, variety = _task(sample)
    champion, figures, small_price, small_basis = _champion(artifacts, workload, settings)
    stage = route.label if route else FRONTIER
    margin = None if frontier_price is None else frontier_price - small_price
    realized = small_answers * margin if margin is not None else 0.0
    if route is not None and route.cascade is not None and frontier_price is not None:
        coverage, escalated, where = _cascade_coverage(answered, route)
        realized -= escalated * small_price  # an escalated call was asked of the small model too
        small_price = blended_usd_per_1k(coverage, small_price * 1000, frontier_price * 1000) / 1000
        small_basis += f"; cascade blended at {coverage:.0%} coverage ({where})"
        margin = frontier_price - small_price
    projected = None if margin is None else margin * per_month
    payback = settings.costs.migration_cost_usd / projected if projected and projected > 0 else None
    spend = None if frontier_price is None else frontier_price * per_month
    recommended, reason = _recommend(stage, spend, projected, payback, task, variety, settings)
    return WorkloadLine(
        workload=workload, requests_per_day=per_day, requests_per_month=per_month,
        frontier_usd_per_request=frontier_price, frontier_usd_per_month=spend, frontier_price_basis=basis,
        task=task, answer_variety=variety, stage=stage, autopilot=bool(route and route.autopilot),
        champion_version=champion, champion_figures=figures,
        small_usd_per_request=small_price, small_price_basis=small_basis, small_answers=small_answers,
        realized_saving_usd=realized,
        projected_saving_usd_per_month=projected, payback_months=payback, recommended=recommended, reason=reason)


def _cascade_coverage(answered: pd.DataFrame, route: Route) -> tuple[float, int, str]:
    """The share of a cascade route's calls its small model answered alone (live, else as evaluated), and how many
    calls were escalated."""
    with_confidence = answered.groupby("served_by")["with_confidence"].sum()
    covered, escalated = int(with_confidence.get(SERVED_BY_SMALL, 0)), int(with_confidence.get(SERVED_BY_FRONTIER, 0))
    if covered + escalated:
        return covered / (covered + escalated), escalated, f"live, {covered + escalated} calls"
    return route.cascade.coverage or 0.0, 0, "as evaluated: no live cascade calls yet"


def _frontier_price(frontier: pd.DataFrame, costs: CostSettings) -> tuple[float | None, str]:
    """``frontier_usd_per_request`` on the database's aggregates (token means weighted by their groups' rows)."""
    tokens = frontier.dropna(subset=["prompt_tokens", "completion_tokens"])
    weights = tokens["rows"] / tokens["rows"].sum()
    return frontier_usd_per_request(
        float(frontier["cost_usd"].sum()), int(frontier["costed"].sum()),
        float((tokens["prompt_tokens"] * weights).sum()) if len(tokens) else None,
        float((tokens["completion_tokens"] * weights).sum()) if len(tokens) else None, costs.frontier_price)


def _task(answers: list[tuple[str | None, list | None]]) -> tuple[str, float | None]:
    """The task of the newest answers, as curation would infer it, and their share of distinct answers."""
    if not answers:
        return "unknown", None
    from distillery.curation import infer_task

    calls = [tool_call_answer(tool_calls) for _, tool_calls in answers if tool_calls]
    if len(calls) >= 0.9 * len(answers):
        return TOOL_CALL, len(set(calls)) / len(calls)
    series = pd.Series([text for text, _ in answers if text is not None], dtype=object)
    return (infer_task(series), series.str.strip().nunique() / len(series)) if len(series) else ("unknown", None)


def _champion(artifacts: ArtifactStore, workload: str,
              settings: PortfolioSettings) -> tuple[str | None, dict, float, str]:
    """The newest passed eval report's model version, figures and serving-based price per request."""
    estimate = (settings.small_usd_per_1k_estimate / 1000,
                f"estimate: ${settings.small_usd_per_1k_estimate:g} per 1k requests (no evaluated champion)")
    for version in reversed(artifacts.versions(workload, REPORT)):
        report = artifacts.get(workload, REPORT, version)
        if not report.manifest.get("passed"):
            continue
        figures = {"headline_metric": report.manifest.get("headline_metric"),
                   "headline": report.manifest.get("headline"), "report_version": version}
        details = json.loads((report.path / "report.json").read_text())
        figures["verdict"] = details.get("verdict")
        per_1k = ((details.get("operations") or {}).get("small_model") or {}).get("usd_per_1k_requests")
        if per_1k is None:
            return str(report.manifest.get("model_version")), figures, *estimate
        return (str(report.manifest.get("model_version")), figures, per_1k / 1000,
                f"eval report {version}: served at ${per_1k:.4f} per 1k requests")
    return None, {}, *estimate


def _recommend(stage: str, spend: float | None, projected: float | None, payback: float | None, task: str,
               variety: float | None, settings: PortfolioSettings) -> tuple[bool, str]:
    threshold = settings.recommend_above_usd_per_month
    if spend is None:
        return False, "no frontier cost or token usage logged: it cannot be priced"
    if stage != FRONTIER:
        return False, f"already moving: its route is {stage}"
    if spend <= threshold:
        return False, (f"${spend:,.0f}/month on the frontier, not over ${threshold:,.0f}: an evaluation would not pay "
                       "back within a quarter")
    narrow = task in (CLASSIFICATION, EXTRACTION, TOOL_CALL) or (
        task == FREE_TEXT and variety is not None and variety <= settings.max_free_text_variety)
    if not narrow:
        return False, (f"${spend:,.0f}/month, but {task} with {variety:.0%} distinct answers: too open for a small "
                       "model" if variety is not None else f"${spend:,.0f}/month, but its task is {task}")
    return True, (f"${spend:,.0f}/month on the frontier, {task}"
                  + (f" ({variety:.0%} distinct answers)" if task == FREE_TEXT else "")
                  + f": projected saving ${projected:,.0f}/month"
                  + (f", payback in {payback:.1f} months" if payback else ""))


COLUMNS = ["workload", "requests_per_month", "frontier_usd_per_month", "task", "stage", "autopilot",
           "realized_saving_usd",
           "projected_saving_usd_per_month", "recommended", "reason"]


def portfolio_records(lines: list[WorkloadLine]) -> list[dict]:
    """The lines as plain JSON-ready dicts, the table's keys first."""
    return [{**{key: line.as_dict()[key] for key in COLUMNS}, **line.as_dict()} for line in lines]


def _money(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value == 0:
        return "$0"
    return f"${value:,.0f}" if abs(value) >= 100 else f"${value:,.2f}" if abs(value) >= 1 else f"${value:.4f}"


def _stage(line: WorkloadLine) -> str:
    return f"{line.stage} (autopilot)" if line.autopilot else line.stage


def portfolio_markdown(lines: list[WorkloadLine]) -> str:
    rows = ["| workload | requests/month | frontier $/month | task | stage | champion | realized saving | "
            "projected saving/month | payback | recommended |", "|---|---:|---:|---|---|---|---:|---:|---:|---|"]
    for line in lines:
        champion = (f"v{line.champion_version} ({line.champion_figures.get('headline_metric')} "
                    f"{line.champion_figures.get('headline'):.3f})" if line.champion_version else "-")
        payback = f"{line.payback_months:.1f} mo" if line.payback_months else "-"
        rows.append(f"| {line.workload} | {line.requests_per_month:,.0f} | {_money(line.frontier_usd_per_month)} | "
                    f"{line.task} | {_stage(line)} | {champion} | {_money(line.realized_saving_usd)} | "
                    f"{_money(line.projected_saving_usd_per_month)} | {payback} | "
                    f"{'**yes**' if line.recommended else 'no'}: {line.reason} |")
    return "\n".join(rows)


def portfolio_text(lines: list[WorkloadLine]) -> str:
    """A plain table for a terminal."""
    header = ["workload", "req/month", "frontier/month", "task", "stage", "realized", "projected/month", "rec"]
    table = [[line.workload, f"{line.requests_per_month:,.0f}", _money(line.frontier_usd_per_month), line.task,
              _stage(line), _money(line.realized_saving_usd), _money(line.projected_saving_usd_per_month),
              "yes" if line.recommended else "no"] for line in lines]
    widths = [max(len(str(row[i])) for row in [header, *table]) for i in range(len(header))]
    out = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in [header, *table]]
    out += [f"  {line.workload}: {line.reason}" for line in lines]
    return "\n".join(out)


def spend_png(lines: list[WorkloadLine]) -> bytes:
    """Monthly spend per workload: all of it on the frontier against all of it on the small model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [line.workload for line in lines]
    frontier = [line.frontier_usd_per_month or 0.0 for line in lines]
    small = [line.small_usd_per_request * line.requests_per_month for line in lines]
    figure, axes = plt.subplots(figsize=(6.4, 0.5 + 0.45 * max(len(lines), 1)), dpi=80)
    positions = range(len(names))
    axes.barh([p + 0.2 for p in positions], frontier, height=0.4, label="frontier", color="#c0504d")
    axes.barh([p - 0.2 for p in positions], small, height=0.4, label="small model", color="#4f81bd")
    axes.set_yticks(list(positions), names)
    axes.invert_yaxis()
    axes.set_xlabel("USD per month at the logged volume")
    axes.legend(loc="lower right")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()
