"""Where Distillery keeps its data. Read at call time, never at import time."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

from distillery.errors import DistilleryError

DEFAULT_WORKLOAD = "default"
DOC = "doc"  # a settings field's metadata key for its one-line description


def setting(default: Any, doc: str) -> Any:
    """A field of a settings dataclass with its description: the Dagster launchpad shows the same default and doc
    (``assets/configs.py`` builds the run configs from these fields)."""
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={DOC: doc})
    return dataclasses.field(default=default, metadata={DOC: doc})
_WORKLOAD_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")


def home() -> Path:
    """The data directory: log store, artifacts, MLflow store, serving state."""
    return Path(os.environ.get("DISTILLERY_HOME", ".distillery")).resolve()


def model_cache() -> Path:
    """Converted base models; shared between data directories because conversion is slow."""
    default = Path.home() / ".cache" / "distillery" / "models"
    return Path(os.environ.get("DISTILLERY_MODEL_CACHE", default)).resolve()


# The public datasets the benchmarks and tests read, and the files each must hold (README: "Public datasets", under Configuration).
PUBLIC_DATASETS = {
    "banking77": "banking77/train.csv and banking77/test.csv (columns text, category)",
    "dstc8_spans": "dstc8_spans/<domain>/{train_0,test}.json (DSTC8 SGD dialogues with slot spans), e.g. Buses_1",
}


def public_dataset(name: str) -> Path:
    """The folder of a public dataset under $DISTILLERY_DATA (default: ../shared/data beside the checkout)."""
    beside_checkout = Path(__file__).resolve().parents[2] / "shared" / "data"
    root = Path(os.environ.get("DISTILLERY_DATA") or beside_checkout).resolve()
    folder = root / name
    if not folder.is_dir() or not any(folder.iterdir()):
        raise DistilleryError(
            f"the {name} dataset is not in {root}: set DISTILLERY_DATA to a folder that holds "
            f"{PUBLIC_DATASETS[name]} (the README's 'Public datasets' says what they are)")
    return folder


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
