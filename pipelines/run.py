"""The one way into the lifecycle job from outside Dagster: ``distillery run`` and ``distillery demo`` call
``run_lifecycle``. The run is recorded in the Dagster instance of $DAGSTER_HOME and shows in its UI."""

import contextlib

import dagster as dg

from assets import workload_partitions
from pipelines.automation import lifecycle_job
from pipelines.definitions import defs


def run_lifecycle(workload: str, *, epochs: float | None = None, max_gap_points: float | None = None,
                  instance: dg.DagsterInstance | None = None) -> bool:
    """Materialize the whole lifecycle for ``workload`` in this process; True when the run succeeded.

    ``epochs`` overrides the fine-tune's, ``max_gap_points`` the gate's allowed gap to the frontier.
    """
    ops: dict = {}
    if epochs is not None:
        ops["lora_adapter"] = {"config": {"epochs": epochs}}
    if max_gap_points is not None:
        ops["eval_report"] = {"config": {"max_gap_to_frontier_points": max_gap_points}}
    with contextlib.ExitStack() as stack:
        if instance is None:
            instance = stack.enter_context(dg.DagsterInstance.get())
        if workload not in instance.get_dynamic_partitions(workload_partitions.name):
            instance.add_dynamic_partitions(workload_partitions.name, [workload])
        result = defs().resolve_job_def(lifecycle_job.name).execute_in_process(
            partition_key=workload, instance=instance, raise_on_error=False,
            run_config={"ops": ops, "loggers": {"console": {"config": {"log_level": "INFO"}}}},
        )
    return result.success
