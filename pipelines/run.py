"""The one way into the lifecycle job from outside Dagster: ``distillery run`` and ``distillery demo`` call
``run_lifecycle``.

The run is launched the way the UI launches one: ``dagster job launch`` against the code location in
``workspace.yaml``, into the Dagster instance of $DAGSTER_HOME. So it belongs to the job (its Runs tab, the
timeline) and re-executes from the UI like any other run. A queued run needs the daemon: when none is running
(no ``dagster dev`` or ``dagster-daemon`` on this instance), one is started for the run's duration. The run's
events are read back from the instance and printed as they arrive.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg

from assets import workload_partitions
from distillery import settings
from pipelines.automation import lifecycle_job

WORKSPACE = Path(__file__).resolve().parents[1] / "workspace.yaml"
_DAEMON_FRESH_S = 60  # a daemon whose heartbeat is older than this is taken for gone


def _executable(name: str) -> str:
    """The console script beside this Python (the virtualenv's), else on PATH."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def _daemon_alive(instance: dg.DagsterInstance) -> bool:
    heartbeats = instance.get_daemon_heartbeats()
    beat = heartbeats.get("QUEUED_RUN_COORDINATOR")
    return beat is not None and time.time() - beat.timestamp < _DAEMON_FRESH_S


def run_lifecycle(workload: str, *, epochs: float | None = None, gate: dict | None = None,
                  curation: dict | None = None, say=print, poll_s: float = 1.0) -> bool:
    """Launch the lifecycle run for ``workload`` against the code location and wait for it; True when it succeeded.

    ``epochs`` overrides the fine-tune's, ``gate`` the gate's settings (``eval_report``'s config), ``curation``
    ``curated_dataset``'s.
    """
    ops: dict = {}
    if epochs is not None:
        ops["lora_adapter"] = {"config": {"epochs": epochs}}
    if gate:
        ops["eval_report"] = {"config": gate}
    if curation:
        ops["curated_dataset"] = {"config": curation}
    run_id = str(uuid.uuid4())
    _use_default_homes()
    with dg.DagsterInstance.get() as instance:
        if workload not in instance.get_dynamic_partitions(workload_partitions.name):
            instance.add_dynamic_partitions(workload_partitions.name, [workload])
        launched = subprocess.run(
            [_executable("dagster"), "job", "launch", "-w", str(WORKSPACE), "-j", lifecycle_job.name,
             "--run-id", run_id, "--tags", json.dumps({"dagster/partition": workload}),
             "--config-json", json.dumps({"ops": ops})],
            capture_output=True, text=True, cwd=WORKSPACE.parent)
        if launched.returncode != 0:
            say(launched.stdout + launched.stderr)
            return False
        daemon = None
        if instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.QUEUED and not _daemon_alive(instance):
            log = open(Path(instance.root_directory) / "daemon.log", "a")
            daemon = subprocess.Popen([_executable("dagster-daemon"), "run", "-w", str(WORKSPACE),
                                       "--log-level", "warning"], cwd=WORKSPACE.parent, stdout=log,
                                      stderr=subprocess.STDOUT)
        try:
            run = _follow(instance, run_id, say, poll_s, daemon)
        finally:
            if daemon is not None:
                daemon.terminate()
                daemon.wait(timeout=60)
                log.close()
    return run.status == dg.DagsterRunStatus.SUCCESS


def _use_default_homes() -> None:
    """$DAGSTER_HOME and $DISTILLERY_HOME as the CLI and the Pipes workers need them, defaulted the same way for every
    caller (``settings.dagster_home``: the repository's dagster_home/ when run from its root)."""
    dagster_home = settings.dagster_home()
    dagster_home.mkdir(parents=True, exist_ok=True)
    os.environ.update(DAGSTER_HOME=str(dagster_home), DISTILLERY_HOME=str(settings.home()))


def _follow(instance: dg.DagsterInstance, run_id: str, say, poll_s: float,
            daemon: subprocess.Popen | None) -> dg.DagsterRun:
    """Print the run's INFO-and-above events as they are stored, until the run has finished (or the daemon it waits
    for in the queue has died: then the run stays queued, and the message says where the daemon's log is)."""
    shown = 0
    while True:
        run = instance.get_run_by_id(run_id)
        if run.status == dg.DagsterRunStatus.QUEUED and daemon is not None and daemon.poll() is not None:
            say(f"the Dagster daemon exited (code {daemon.returncode}) before it started run {run_id}; its log: "
                f"{Path(instance.root_directory) / 'daemon.log'}")
            return run
        entries = instance.all_logs(run_id)
        for entry in entries[shown:]:
            if entry.level >= logging.INFO and entry.message:
                stamp = time.strftime("%H:%M:%S", time.localtime(entry.timestamp))
                say(f"{stamp} {entry.step_key or run.job_name} - {entry.message}")
                if entry.dagster_event is not None and entry.dagster_event.is_step_failure:
                    error = entry.dagster_event.step_failure_data.error
                    say("  " + re.sub(r"^[\w.]+: ", "", error.message.strip()))  # without the exception's class path
        shown = len(entries)
        if run.is_finished:
            return run
        time.sleep(poll_s)
