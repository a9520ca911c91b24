import base64

import dagster as dg
from pydantic import Field

from assets.conditions import on_new_traffic_or_daily
from assets.live_monitoring import live_monitoring
from assets.raw_llm_logs import frontier_traffic
from distillery.evaluation import CostSettings
from distillery.fleet import PortfolioSettings, build_portfolio, portfolio_markdown, spend_png
from distillery.routing import FRONTIER
from resources import ArtifactsResource, LogStoreResource


class PortfolioConfig(dg.Config):
    recommend_above_usd_per_month: float = Field(
        default=3000.0, description="Recommend a workload only above this projected frontier spend per month.")
    max_free_text_variety: float = Field(
        default=0.5, description="Free text counts as narrow when at most this share of its answers is distinct.")
    small_usd_per_1k_estimate: float = Field(
        default=0.05, description="The small model's price per 1k requests for a workload with no evaluated champion.")
    migration_cost_usd: float = Field(default=5000.0, description="One-off cost of a migration, for the payback.")


@dg.asset(deps=[frontier_traffic, live_monitoring], kinds={"sqlalchemy", "pandas"}, group_name="fleet",
          automation_condition=on_new_traffic_or_daily)
def workload_portfolio(config: PortfolioConfig, log_store: LogStoreResource,
                       artifacts: ArtifactsResource) -> dg.MaterializeResult:
    """Every workload in the log store, ranked by what moving it to a small model would save: volume, frontier
    spend, task, route stage, champion, realized and projected saving, payback, and a recommendation with its
    reason."""
    settings = PortfolioSettings(config.recommend_above_usd_per_month, config.max_free_text_variety,
                                 config.small_usd_per_1k_estimate,
                                 costs=CostSettings(migration_cost_usd=config.migration_cost_usd))
    lines = build_portfolio(log_store.open(), artifacts.open(), settings)
    chart = base64.b64encode(spend_png(lines)).decode()
    return dg.MaterializeResult(metadata={
        "workloads": len(lines),
        "recommended": dg.MetadataValue.json([line.workload for line in lines if line.recommended]),
        "frontier_usd_per_month": dg.MetadataValue.float(round(sum(line.frontier_usd_per_month or 0 for line in lines),
                                                               2)),
        "realized_saving_usd": dg.MetadataValue.float(round(sum(line.realized_saving_usd for line in lines), 2)),
        "projected_saving_usd_per_month": dg.MetadataValue.float(round(sum(
            line.projected_saving_usd_per_month or 0 for line in lines if line.stage == FRONTIER), 2)),
        "portfolio": dg.MetadataValue.md(portfolio_markdown(lines)),
        "spend_by_workload": dg.MetadataValue.md(f"![spend by workload](data:image/png;base64,{chart})"),
    })
