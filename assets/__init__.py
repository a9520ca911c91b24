"""Dagster assets of the workload lifecycle (thin wrappers over ``distillery.lifecycle``) and of the fleet."""

from assets.curated_dataset import curated_dataset, label_balance_check
from assets.deployed_endpoint import deployed_endpoint
from assets.eval_report import eval_report
from assets.live_monitoring import live_monitoring
from assets.lora_adapter import lora_adapter
from assets.partitions import workload_partitions
from assets.raw_llm_logs import frontier_traffic, raw_llm_logs
from assets.workload_portfolio import workload_portfolio

LIFECYCLE_ASSETS = [raw_llm_logs, curated_dataset, lora_adapter, eval_report, deployed_endpoint]

__all__ = [
    "LIFECYCLE_ASSETS", "curated_dataset", "deployed_endpoint", "eval_report", "frontier_traffic",
    "label_balance_check", "live_monitoring", "lora_adapter", "raw_llm_logs", "workload_partitions",
    "workload_portfolio",
]
