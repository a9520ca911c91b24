"""MLflow bookkeeping for fine-tunes: one parent run per training of a dataset version, one child run per candidate
student, one registered model per workload.

Runs of a workload share the experiment ``distillery/<workload>`` (kind ``finetuning``, so the UI
opens on its runs) so they compare side by side in the MLflow UI: the candidates of one dataset version are the
children of its run. Each student is logged as an MLflow model (``serving.mlflow_model``); the one evaluation chooses
becomes a version of the registered model ``distillery-<workload>``; promotion moves registry aliases (``challenger``, ``champion``),
never stages. Everything goes through an explicit ``MlflowClient``, so no global MLflow
state leaks between callers.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import time
from pathlib import Path
from typing import Any, Iterator

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from distillery.settings import default_mlflow_uri, home

CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_ARTIFACT_PATH = "model"  # the MLflow model (serving.mlflow_model); the adapter's files inside it:
ADAPTER_ARTIFACT_PATH = f"{MODEL_ARTIFACT_PATH}/artifacts/adapter"
# The MLflow UI opens an experiment of this kind on its runs (unset, MLflow 3 opens the GenAI traces view).
EXPERIMENT_KIND = {"mlflow.experimentKind": "finetuning"}
NOTE = "mlflow.note.content"  # the run's description in the MLflow UI


def registered_model_name(workload: str) -> str:
    return f"distillery-{workload}"


class Tracker:
    def __init__(self, tracking_uri: str | None = None, artifact_root: str | None = None):
        self.tracking_uri = tracking_uri or default_mlflow_uri()
        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.artifact_root = artifact_root or str(home() / "mlartifacts")
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def experiment_id(self, workload: str) -> str:
        name = f"distillery/{workload}"
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            return self.client.create_experiment(name, artifact_location=f"{self.artifact_root}/{workload}",
                                                 tags=EXPERIMENT_KIND)
        for key, value in EXPERIMENT_KIND.items():
            if experiment.tags.get(key) != value:  # created before the kind was set
                self.client.set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id

    @contextlib.contextmanager
    def run(self, workload: str, run_name: str, tags: dict[str, str], parent_run_id: str | None = None) -> Iterator[str]:
        """Yield a run id; the run ends FINISHED, or FAILED if the block raises. MLflow's system-metrics monitor
        samples CPU, memory (and GPU, where there is one) into the run as time series while the block runs. With
        ``parent_run_id`` the run is nested under that one (MLflow shows it as its child)."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # Source and user, which the fluent API would fill in and an explicit client leaves empty.
        origin = {"mlflow.source.type": "JOB", "mlflow.source.name": "distillery lora_adapter (workers/train_lora.py)",
                  "mlflow.user": getpass.getuser()}
        nested = {"mlflow.parentRunId": parent_run_id} if parent_run_id else {}
        run = self.client.create_run(self.experiment_id(workload), run_name=run_name, tags={**origin, **tags, **nested})
        run_id = run.info.run_id
        monitor = SystemMetricsMonitor(run_id, sampling_interval=1, samples_before_logging=1,
                                      tracking_uri=self.tracking_uri)
        monitor.start()
        status = "FAILED"
        try:
            yield run_id
            status = "FINISHED"
        finally:
            monitor.finish()
            self.client.set_terminated(run_id, status=status)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        for key, value in params.items():
            self.client.log_param(run_id, key, value)

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_series(self, run_id: str, key: str, points: list[tuple[int, float]]) -> None:
        now = int(time.time() * 1000)
        for start in range(0, len(points), 500):  # MLflow caps a batch at 1000 metrics
            batch = points[start : start + 500]
            self.client.log_batch(run_id, metrics=[Metric(key, float(v), now, step) for step, v in batch])

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self.client.set_tag(run_id, key, value)

    def describe(self, run_id: str, text: str) -> None:
        """The run's description (markdown) on its MLflow page."""
        self.client.set_tag(run_id, NOTE, text)

    def log_dataset(self, run_id: str, name: str, digest: str, path: str, profile: dict[str, Any]) -> None:
        """The training data as the run's input (shown on the run page and comparable across runs)."""
        dataset = Dataset(name=name, digest=digest[:36], source_type="local", source=json.dumps({"uri": path}),
                          profile=json.dumps(profile))
        self.client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context",
                                                                                      "training")])])

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def register_adapter(self, workload: str, run_id: str, tags: dict[str, str]) -> str:
        """A new version of the workload's registered model, pointing at the run's MLflow model."""
        name = registered_model_name(workload)
        with contextlib.suppress(MlflowException):  # it exists already after the first training
            self.client.create_registered_model(name, description=f"LoRA adapters for workload {workload!r}")
        source = f"{self.client.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT_PATH}"
        version = self.client.create_model_version(name, source=source, run_id=run_id, tags=tags)
        return str(version.version)

    def set_alias(self, workload: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(registered_model_name(workload), alias, version)

    def promote(self, workload: str, version: str) -> None:
        """``version`` becomes champion (the alias leaves the former one) and stops being challenger: afterwards
        only a newer, not yet promoted version carries ``challenger``."""
        self.set_alias(workload, CHAMPION, version)
        if self.alias_version(workload, CHALLENGER) == version:
            self.client.delete_registered_model_alias(registered_model_name(workload), CHALLENGER)

    def tag_version(self, workload: str, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(registered_model_name(workload), version, key, value)

    def run_tags(self, run_id: str) -> dict[str, str]:
        return dict(self.client.get_run(run_id).data.tags)

    def version_tag(self, workload: str, version: str, key: str) -> str | None:
        return self.client.get_model_version(registered_model_name(workload), version).tags.get(key)

    def alias_version(self, workload: str, alias: str) -> str | None:
        try:
            return str(self.client.get_model_version_by_alias(registered_model_name(workload), alias).version)
        except MlflowException:
            return None

    def download_adapter(self, workload: str, version: str, destination: Path) -> Path:
        """A registered adapter version's files, copied from the MLflow artifact store."""
        run_id = self.client.get_model_version(registered_model_name(workload), version).run_id
        target = destination / f"v{version}"
        target.mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, ADAPTER_ARTIFACT_PATH, str(target)))

    def metric_by_version(self, workload: str, key: str) -> list[tuple[str, float]]:
        """``key``'s latest value on the training run of each registered version that has it, oldest first."""
        try:
            versions = self.client.search_model_versions(f"name='{registered_model_name(workload)}'")
        except MlflowException:
            return []
        values = []
        for version in sorted(versions, key=lambda v: int(v.version)):
            metrics = self.client.get_run(version.run_id).data.metrics if version.run_id else {}
            if key in metrics:
                values.append((str(version.version), metrics[key]))
        return values
