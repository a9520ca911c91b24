"""Where Distillery keeps its data. Read at call time, never at import time."""

from __future__ import annotations

import os
import re
from pathlib import Path

DEFAULT_WORKLOAD = "default"
_WORKLOAD_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")


def home() -> Path:
    """The data directory: log store, artifacts, MLflow store, serving state."""
    return Path(os.environ.get("DISTILLERY_HOME", ".distillery")).resolve()


def model_cache() -> Path:
    """Converted base models; shared between data directories because conversion is slow."""
    default = Path.home() / ".cache" / "distillery" / "models"
    return Path(os.environ.get("DISTILLERY_MODEL_CACHE", default)).resolve()


def default_log_store_url() -> str:
    return os.environ.get("DISTILLERY_LOG_STORE_URL") or f"sqlite:///{home() / 'logs.db'}"


def default_mlflow_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home() / 'mlflow.db'}"


def validate_workload(name: str) -> str:
    """Workload names become partition keys, file names and MLflow model names."""
    if not _WORKLOAD_NAME.match(name):
        raise ValueError(
            f"invalid workload name {name!r}: use 1-100 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def dagster_home() -> Path:
    """$DAGSTER_HOME, else the repository's dagster_home/ when run from its root, else one in home()."""
    if os.environ.get("DAGSTER_HOME"):
        return Path(os.environ["DAGSTER_HOME"]).resolve()
    local = Path.cwd() / "dagster_home"
    if (local / "dagster.yaml").exists():
        return local
    return home() / "dagster"
