import json

import dagster as dg
from pydantic import Field

from assets.conditions import follow_upstream
from assets.errors import user_errors_as_failures
from assets.partitions import workload_partitions
from assets.raw_llm_logs import raw_llm_logs
from assets.upstream import recorded_version
from distillery.curation import label_balance
from distillery.curation import COPIED_SHARE
from distillery.lifecycle import CURATED, build_curated_dataset
from distillery.models import load_tokenizer
from resources import ArtifactsResource, TrainerResource

BLOCKING_CHECKS = {
    "enough_rows": "The train split has at least min_train_rows rows.",
    "no_pii_in_train": "No PII pattern is left in the train split.",
    "no_test_leakage": "No test prompt is also a train prompt.",
}


class CurationConfig(dg.Config):
    seed: int = 0
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    min_rows: int = Field(default=20, description="Usable rows needed at all to split.")
    min_train_rows: int = Field(default=16, description="Train rows the enough_rows check requires.")
    task: str = Field(default="auto", description="auto, classification, extraction or free_text.")
    labels: list[str] = Field(default=[], description="Classification label set; empty: inferred from the logs.")
    json_schema: str = Field(default="", description="Extraction: JSON schema (as JSON text) answers must satisfy.")
    max_tokens: int = Field(default=512, description="Drop examples longer than this in the base model's tokens.")
    copied_share: float = Field(default=COPIED_SHARE, description=(
        "Extraction: a string field whose values are copies of the user's text in at least this share of rows is "
        "marked copied, and decoded grounded in each request's user text."))
    scrub_pii: bool = Field(default=True, description="Replace PII with typed placeholders.")


@dg.asset(
    partitions_def=workload_partitions, deps=[raw_llm_logs], kinds={"huggingface", "pandas"}, group_name="lifecycle",
    check_specs=[dg.AssetCheckSpec(name, asset="curated_dataset", description=text, blocking=True,
                                   automation_condition=follow_upstream, partitions_def=workload_partitions)
                 for name, text in BLOCKING_CHECKS.items()],
    automation_condition=follow_upstream, pool="cpu",
)
def curated_dataset(
    context: dg.AssetExecutionContext, config: CurationConfig, artifacts: ArtifactsResource,
    trainer: TrainerResource,
) -> dg.MaterializeResult:
    """Filtered, deduplicated, PII-scrubbed examples; a stratified or time-based train/validation/test split."""
    with user_errors_as_failures():
        tokenizer = load_tokenizer(trainer.prepare())
        curated = build_curated_dataset(
            artifacts.open(), context.partition_key, seed=config.seed,
            validation_fraction=config.validation_fraction, test_fraction=config.test_fraction,
            min_rows=config.min_rows, task=config.task, labels=config.labels or None,
            json_schema=json.loads(config.json_schema) if config.json_schema else None, scrub_pii=config.scrub_pii,
            max_tokens=config.max_tokens, min_train_rows=config.min_train_rows, copied_share=config.copied_share,
            count_tokens=lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]),
            raw_version=recorded_version(context, raw_llm_logs),
        )
    report, artifact = curated.report, curated.artifact
    check_results = [_check_result(name, outcome, dg.AssetCheckSeverity.ERROR)
                     for name, outcome in curated.checks.items()]
    return dg.MaterializeResult(
        metadata={
            "task": report.task,
            "train_rows": report.train,
            "validation_rows": report.validation,
            "test_rows": report.test,
            "content_hash": report.content_hash,
            "log_id_range": f"{report.first_log_id}-{report.last_log_id}",
            "pii_replaced": dg.MetadataValue.md("| type | replaced |\n|---|---:|\n" + "".join(
                f"| {kind} | {count} |\n" for kind, count in sorted(report.pii.items())) if report.pii else "none"),
            "data_card": dg.MetadataValue.md(curated.data_card),
            **({"copied_fields": dg.MetadataValue.json(report.copied_fields)} if report.copy_rates else {}),
            "version": artifact.version,
            "path": dg.MetadataValue.path(str(artifact.path)),
        },
        check_results=check_results,
        data_version=dg.DataVersion(artifact.version),
    )


def _check_result(name: str, outcome, severity: dg.AssetCheckSeverity) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=name, passed=outcome.passed, description=outcome.description, severity=severity,
        metadata={key: dg.MetadataValue.json(value) if isinstance(value, (list, dict)) else value
                  for key, value in outcome.details.items()},
    )


class LabelBalanceConfig(dg.Config):
    max_ratio: float = Field(default=10.0, description="Largest/smallest label count above which the check warns.")


@dg.asset_check(asset=curated_dataset, name="label_balance", partitions_def=workload_partitions,
                description="Warns on heavy label imbalance in the version Dagster recorded; rerun it alone with "
                "another max_ratio.", automation_condition=follow_upstream)
def label_balance_check(context: dg.AssetCheckExecutionContext, config: LabelBalanceConfig,
                        artifacts: ArtifactsResource) -> dg.AssetCheckResult:
    version = recorded_version(context, curated_dataset)
    manifest = artifacts.open().get(context.partition_key, CURATED, version).manifest
    outcome = label_balance(manifest["label_counts"], config.max_ratio)
    return _check_result("label_balance", outcome, dg.AssetCheckSeverity.WARN)
