"""What a workload costs on the frontier and on the small model, and what moving it saves.

Frontier: latency and tokens from the logged exchanges; cost from the ``cost_usd`` the
gateway logged (its price table applied to the provider's usage), else the logged tokens
priced with a given price, else tokens counted on the prompts and answers (the small model's
tokenizer: an estimate, and the report says so).
Small model: a machine at ``usd_per_hour`` serving at the throughput the serving engine
delivered to concurrent callers in evaluation (not evaluation's own batches), so one request
costs ``usd_per_hour / 3600 / requests_per_s``; latency is per request, queueing included.
Volume: the workload's logged requests per day, scaled to a 30.4-day month, unless a
monthly volume is given. Payback: the one-off migration cost over the monthly saving.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

import pandas as pd

from distillery.pricing import Price

DAYS_PER_MONTH = 365.25 / 12


@dataclass(frozen=True)
class CostSettings:
    serving_usd_per_hour: float = 1.0  # the small model's serving machine
    migration_cost_usd: float = 5000.0  # one-off: engineering time, evaluation, the cut-over itself
    monthly_requests: float | None = None  # None: the logged rate
    # Used only for logged exchanges without a logged cost (imported logs); gpt-4o's list price.
    frontier_price: Price = Price(2.50, 10.00)


@dataclass
class SideFigures:
    name: str
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    prompt_tokens_per_request: float | None
    completion_tokens_per_request: float | None
    usd_per_1k_requests: float | None
    basis: str  # where the cost figure comes from


@dataclass
class CostComparison:
    frontier: SideFigures
    small_model: SideFigures
    requests_per_month: float
    volume_basis: str
    migration_cost_usd: float
    # The share of calls the small model answers alone: 1 in full mode, the cascade's coverage otherwise (every call
    # is asked of the small model first; an escalated one is then answered by the frontier too).
    coverage: float = 1.0

    @property
    def blended_usd_per_1k(self) -> float | None:
        if self.frontier.usd_per_1k_requests is None or self.small_model.usd_per_1k_requests is None:
            return None
        return blended_usd_per_1k(self.coverage, self.small_model.usd_per_1k_requests,
                                  self.frontier.usd_per_1k_requests)

    @property
    def monthly_saving_usd(self) -> float | None:
        blended = self.blended_usd_per_1k
        if blended is None:
            return None
        return (self.frontier.usd_per_1k_requests - blended) * self.requests_per_month / 1000

    @property
    def payback_months(self) -> float | None:
        """None when there is no saving to pay the migration back."""
        saving = self.monthly_saving_usd
        return self.migration_cost_usd / saving if saving and saving > 0 else None

    def money(self) -> dict[str, float]:
        """The headline money figures that are known (a missing cost leaves its figures out)."""
        figures = {"frontier_usd_per_1k": self.frontier.usd_per_1k_requests,
                   "small_model_usd_per_1k": self.small_model.usd_per_1k_requests,
                   "blended_usd_per_1k": self.blended_usd_per_1k,
                   "monthly_saving_usd": self.monthly_saving_usd, "payback_months": self.payback_months}
        return {key: value for key, value in figures.items() if value is not None}

    def as_dict(self) -> dict:
        return {**asdict(self), "blended_usd_per_1k": self.blended_usd_per_1k,
                "monthly_saving_usd": self.monthly_saving_usd, "payback_months": self.payback_months}


def blended_usd_per_1k(coverage: float, small_usd_per_1k: float, frontier_usd_per_1k: float) -> float:
    """A cascade's cost: every call is answered by the small model first, an escalated one by the frontier too."""
    return small_usd_per_1k + (1 - coverage) * frontier_usd_per_1k


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return float(values[0])
    return float(statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1])


def frontier_usd_per_request(logged_cost_total: float, logged_cost_rows: int, prompt_tokens: float | None,
                             completion_tokens: float | None, price: Price) -> tuple[float | None, str]:
    """The frontier's price per request and its basis: the mean cost the gateway logged, else the mean logged
    tokens at ``price``; None when neither was logged. The eval report and the fleet portfolio both price by it."""
    if logged_cost_rows and logged_cost_total > 0:
        return logged_cost_total / logged_cost_rows, f"cost logged by the gateway on {logged_cost_rows} requests"
    if prompt_tokens is not None and completion_tokens is not None:
        return price.cost(prompt_tokens, completion_tokens), (
            f"logged tokens at ${price.input_per_million:g}/${price.output_per_million:g} "
            "per million input/output tokens")
    return None, "no cost or usage logged"


def frontier_figures(rows: pd.DataFrame, *, price: Price, estimated_tokens: tuple[float, float]) -> SideFigures:
    """The frontier's side from its successful logged exchanges (``rows``)."""
    latencies = [float(v) for v in rows["latency_ms"].dropna()]
    prompt = rows["prompt_tokens"].dropna()
    completion = rows["completion_tokens"].dropna()
    logged_cost = rows["cost_usd"].dropna()
    per_request, basis = frontier_usd_per_request(
        float(logged_cost.sum()), len(logged_cost), float(prompt.mean()) if len(prompt) else None,
        float(completion.mean()) if len(completion) else None, price)
    if per_request is None:
        per_request = price.cost(*estimated_tokens)
        basis = (f"no usage logged: tokens counted with the small model's tokenizer, at "
                 f"${price.input_per_million:g}/${price.output_per_million:g} per million input/output tokens")
    usd_per_1k = per_request * 1000
    return SideFigures(
        name="frontier",
        latency_ms_p50=percentile(latencies, 50),
        latency_ms_p95=percentile(latencies, 95),
        prompt_tokens_per_request=float(prompt.mean()) if len(prompt) else estimated_tokens[0],
        completion_tokens_per_request=float(completion.mean()) if len(completion) else estimated_tokens[1],
        usd_per_1k_requests=usd_per_1k,
        basis=basis,
    )


def small_model_figures(latencies_ms: list[float], prompt_tokens: list[int], completion_tokens: list[int],
                        requests_per_s: float, *, usd_per_hour: float, concurrency: int) -> SideFigures:
    """The small model's side from what the serving engine delivered to ``concurrency`` concurrent callers."""
    return SideFigures(
        name="fine-tuned",
        latency_ms_p50=percentile(latencies_ms, 50),
        latency_ms_p95=percentile(latencies_ms, 95),
        prompt_tokens_per_request=statistics.fmean(prompt_tokens) if prompt_tokens else None,
        completion_tokens_per_request=statistics.fmean(completion_tokens) if completion_tokens else None,
        usd_per_1k_requests=usd_per_hour / 3600 / requests_per_s * 1000 if requests_per_s > 0 else None,
        basis=f"${usd_per_hour:g}/hour serving machine at the {requests_per_s:.2f} requests/s the serving engine "
              f"answered {concurrency} concurrent callers with; latency per request",
    )


def logged_rate(requests: int, first: pd.Timestamp, last: pd.Timestamp) -> tuple[float, float]:
    """(requests per month, days) of ``requests`` logged between ``first`` and ``last``; the span counts at least
    one hour, so a burst of test traffic does not project to an absurd volume."""
    days = max((last - first).total_seconds(), 3600.0) / 86400
    return requests / days * DAYS_PER_MONTH, days


def monthly_volume(created_at: pd.Series, override: float | None) -> tuple[float, str]:
    """Requests per month: ``override``, else the logged rate."""
    if override is not None:
        return float(override), "configured"
    times = pd.to_datetime(created_at)
    per_month, days = logged_rate(len(times), times.min(), times.max())
    return per_month, f"{len(times)} logged requests over {days:.2f} days"


def compare_costs(frontier_rows: pd.DataFrame, small_model: SideFigures, *, estimated_frontier_tokens: tuple[float, float],
                  settings: CostSettings, coverage: float = 1.0) -> CostComparison:
    """Both sides' figures and the projected saving, from the workload's successful logged exchanges; a cascade's
    (the small model answering ``coverage`` of the calls alone) at its blended cost."""
    volume, basis = monthly_volume(frontier_rows["created_at"], settings.monthly_requests)
    frontier = frontier_figures(frontier_rows, price=settings.frontier_price, estimated_tokens=estimated_frontier_tokens)
    return CostComparison(frontier, small_model, volume, basis, settings.migration_cost_usd, coverage)
