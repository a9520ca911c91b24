import dagster as dg

from assets.errors import user_errors_as_failures
from assets.partitions import workload_partitions
from assets.raw_llm_logs import raw_llm_logs
from distillery.lifecycle import build_curated_dataset
from resources import ArtifactsResource


class CurationConfig(dg.Config):
    seed: int = 0
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    min_rows: int = 20


@dg.asset(partitions_def=workload_partitions, deps=[raw_llm_logs], kinds={"huggingface", "pandas"},
          group_name="lifecycle")
def curated_dataset(
    context: dg.AssetExecutionContext, config: CurationConfig, artifacts: ArtifactsResource
) -> dg.MaterializeResult:
    """Failed and empty exchanges and duplicate prompts removed; seeded train/validation/test split in chat format."""
    with user_errors_as_failures():
        artifact, report = build_curated_dataset(
            artifacts.open(), context.partition_key, seed=config.seed,
            validation_fraction=config.validation_fraction, test_fraction=config.test_fraction,
            min_rows=config.min_rows,
        )
    steps = "\n".join([
        "| step | rows |", "|---|---:|",
        f"| rows in | {report.rows_in} |",
        f"| failed exchanges dropped | {report.dropped_errors} |",
        f"| empty answers dropped | {report.dropped_empty} |",
        f"| duplicate prompts dropped | {report.dropped_duplicates} |",
        f"| train / validation / test | {report.train} / {report.validation} / {report.test} |",
    ])
    return dg.MaterializeResult(
        metadata={
            "train_rows": report.train,
            "validation_rows": report.validation,
            "test_rows": report.test,
            "content_hash": report.content_hash,
            "log_id_range": f"{report.first_log_id}-{report.last_log_id}",
            "curation": dg.MetadataValue.md(steps),
            "version": artifact.version,
            "path": dg.MetadataValue.path(str(artifact.path)),
        }
    )
