"""Run the whole lifecycle for one workload in this process, recorded in the Dagster instance.

    python -m pipelines.run WORKLOAD [--epochs N] [--max-gap-points X]

Used by `distillery demo`; the runs show in the Dagster UI of the same DAGSTER_HOME.
"""

import argparse
import sys

import dagster as dg

from assets import workload_partitions
from pipelines.automation import lifecycle_job
from pipelines.definitions import defs


def run_lifecycle(workload: str, instance: dg.DagsterInstance, ops_config: dict | None = None) -> bool:
    if workload not in instance.get_dynamic_partitions(workload_partitions.name):
        instance.add_dynamic_partitions(workload_partitions.name, [workload])
    job = defs.resolve_job_def(lifecycle_job.name)
    result = job.execute_in_process(
        partition_key=workload,
        instance=instance,
        run_config={
            "ops": ops_config or {},
            "loggers": {"console": {"config": {"log_level": "INFO"}}},
        },
        raise_on_error=False,
    )
    return result.success


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload")
    parser.add_argument("--epochs", type=float, help="override lora_adapter's epochs")
    parser.add_argument("--max-gap-points", type=float, help="override the gate's allowed gap to the frontier")
    args = parser.parse_args(argv)
    ops: dict = {}
    if args.epochs is not None:
        ops["lora_adapter"] = {"config": {"epochs": args.epochs}}
    if args.max_gap_points is not None:
        ops["eval_report"] = {"config": {"max_gap_to_frontier_points": args.max_gap_points}}
    with dg.DagsterInstance.get() as instance:
        return 0 if run_lifecycle(args.workload, instance, ops) else 1


if __name__ == "__main__":
    sys.exit(main())
