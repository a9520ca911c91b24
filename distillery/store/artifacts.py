"""Versioned artifacts per workload and lifecycle stage, published atomically.

Layout: ``<root>/<workload>/<stage>/<version>/`` plus ``<stage>/LATEST`` naming the
newest complete version. A version is built in a hidden temporary folder and renamed
into place only when complete, and LATEST moves last, so a crash mid-write never leaves
something a later step would take for the latest.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from distillery.errors import DistilleryError
from distillery.settings import home, validate_workload

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Artifact:
    workload: str
    stage: str
    version: str
    path: Path

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.path / MANIFEST).read_text())


class ArtifactStore:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).resolve() if root else home() / "artifacts"

    def _stage_dir(self, workload: str, stage: str) -> Path:
        return self.root / validate_workload(workload) / stage

    @contextlib.contextmanager
    def publish(self, workload: str, stage: str, manifest: dict[str, Any] | None = None) -> Iterator[Path]:
        """Yield an empty folder to fill; on success it becomes the stage's latest version.

        Whatever the caller adds to ``manifest`` inside the block is written with it.
        On an exception the folder is deleted and LATEST keeps pointing at the previous version.
        """
        stage_dir = self._stage_dir(workload, stage)
        stage_dir.mkdir(parents=True, exist_ok=True)
        version = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + "-" + uuid.uuid4().hex[:6]
        staging = stage_dir / f".tmp-{version}"
        staging.mkdir()
        try:
            yield staging
            meta = {"workload": workload, "stage": stage, "version": version, **(manifest or {})}
            (staging / MANIFEST).write_text(json.dumps(meta, indent=2, default=str))
            final = stage_dir / version
            staging.rename(final)
            pointer = stage_dir / f".LATEST-{version}"
            pointer.write_text(version)
            os.replace(pointer, stage_dir / "LATEST")
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def latest(self, workload: str, stage: str, *, needed_by: str | None = None) -> Artifact:
        pointer = self._stage_dir(workload, stage) / "LATEST"
        if not pointer.exists():
            step = f" before {needed_by}" if needed_by else ""
            raise DistilleryError(
                f"workload {workload!r} has no {stage} yet: materialize {stage} for this workload{step}"
            )
        version = pointer.read_text().strip()
        return Artifact(workload, stage, version, pointer.parent / version)

    def get(self, workload: str, stage: str, version: str) -> Artifact:
        path = self._stage_dir(workload, stage) / version
        if not (path / MANIFEST).exists():
            raise DistilleryError(f"workload {workload!r} has no {stage} version {version!r} under {self.root}")
        return Artifact(workload, stage, version, path)

    def versions(self, workload: str, stage: str) -> list[str]:
        stage_dir = self._stage_dir(workload, stage)
        if not stage_dir.exists():
            return []
        return sorted(p.name for p in stage_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
