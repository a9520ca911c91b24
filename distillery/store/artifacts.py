"""Versioned artifacts per workload and lifecycle stage, published atomically, on a folder or an object store.

Layout: ``<root>/<workload>/<stage>/<version>/`` plus ``<stage>/LATEST`` naming the newest complete
version. The root is a local folder, or any fsspec URL (``s3://bucket/prefix`` with s3fs installed; an
S3-compatible server through ``storage_options={"endpoint_url": ...}``, credentials from the usual
``AWS_*`` variables), so training and evaluation pods on other machines see the same artifacts.

A version is built in a hidden temporary folder and only then made visible, and LATEST moves last,
so a crash mid-write never leaves something a later step would take for the latest. On a folder the
version is renamed into place. On an object store its files are uploaded, ``manifest.json`` last (a
version without a manifest does not exist), and every step works on a local copy: versions never
change once published, so a copy in the cache folder is downloaded once and stays valid.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
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
LATEST = "LATEST"


@dataclass(frozen=True)
class Artifact:
    workload: str
    stage: str
    version: str
    path: Path  # a local folder: the version itself, or its cached copy when the root is an object store

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.path / MANIFEST).read_text())


def is_url(root: str | Path) -> bool:
    return "://" in str(root) and not str(root).startswith("file://")


class ArtifactStore:
    def __init__(self, root: str | Path | None = None, storage_options: dict[str, Any] | None = None,
                 cache_dir: str | Path | None = None):
        self.storage_options = dict(storage_options or {})
        if root and is_url(root):
            import fsspec

            self.location = str(root).rstrip("/")
            # Other processes (the workers) publish too: a cached listing or instance would hide their versions.
            options = {"skip_instance_cache": True, "use_listings_cache": False, **self.storage_options}
            self.fs, self._remote_root = fsspec.core.url_to_fs(self.location, **options)
            digest = hashlib.sha256(self.location.encode()).hexdigest()[:12]
            self.root = Path(cache_dir) if cache_dir else home() / "artifact-cache" / digest
        else:
            self.fs = None
            self.root = Path(str(root).removeprefix("file://")).resolve() if root else home() / "artifacts"
            self.location = str(self.root)

    def _stage_dir(self, workload: str, stage: str) -> Path:
        return self.root / validate_workload(workload) / stage

    def _remote(self, workload: str, stage: str, *parts: str) -> str:
        return "/".join([self._remote_root, validate_workload(workload), stage, *parts])

    def scratch(self, workload: str, name: str) -> Path:
        """A local working folder of the workload that is not a published artifact (e.g. checkpoints)."""
        return self.root / validate_workload(workload) / name

    @contextlib.contextmanager
    def publish(self, workload: str, stage: str, manifest: dict[str, Any] | None = None) -> Iterator[Path]:
        """Yield an empty folder to fill; on success it becomes the stage's latest version.

        Whatever the caller adds to ``manifest`` inside the block is written with it.
        On an exception nothing is published and LATEST keeps pointing at the previous version.
        """
        stage_dir = self._stage_dir(workload, stage)
        stage_dir.mkdir(parents=True, exist_ok=True)
        version = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + "-" + uuid.uuid4().hex[:6]
        staging = stage_dir / f".tmp-{version}"
        staging.mkdir()
        try:
            yield staging
            meta = {"workload": workload, "stage": stage, "version": version, **(manifest or {})}
            if self.fs is not None:
                self._upload(staging, workload, stage, version, meta)
            (staging / MANIFEST).write_text(json.dumps(meta, indent=2, default=str))
            staging.rename(stage_dir / version)
            if self.fs is None:
                pointer = stage_dir / f".LATEST-{version}"
                pointer.write_text(version)
                os.replace(pointer, stage_dir / LATEST)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _upload(self, staging: Path, workload: str, stage: str, version: str, meta: dict[str, Any]) -> None:
        target = self._remote(workload, stage, version)
        files = [path for path in sorted(staging.rglob("*")) if path.is_file()]
        if files:
            self.fs.put([str(path) for path in files],
                        [f"{target}/{path.relative_to(staging).as_posix()}" for path in files])
        self.fs.pipe_file(f"{target}/{MANIFEST}", json.dumps(meta, indent=2, default=str).encode())
        self.fs.pipe_file(self._remote(workload, stage, LATEST), version.encode())

    def latest(self, workload: str, stage: str, *, needed_by: str | None = None) -> Artifact:
        if self.fs is None:
            pointer = self._stage_dir(workload, stage) / LATEST
            version = pointer.read_text().strip() if pointer.exists() else None
        else:
            pointer = self._remote(workload, stage, LATEST)
            version = self.fs.cat_file(pointer).decode().strip() if self.fs.exists(pointer) else None
        if version is None:
            step = f" before {needed_by}" if needed_by else ""
            raise DistilleryError(
                f"workload {workload!r} has no {stage} yet: materialize {stage} for this workload{step}"
            )
        return self.get(workload, stage, version)

    def get(self, workload: str, stage: str, version: str) -> Artifact:
        path = self._stage_dir(workload, stage) / version
        if self.fs is not None and not (path / MANIFEST).exists():
            self._download(workload, stage, version, path)
        if not (path / MANIFEST).exists():
            raise DistilleryError(f"workload {workload!r} has no {stage} version {version!r} under {self.location}")
        return Artifact(workload, stage, version, path)

    def _download(self, workload: str, stage: str, version: str, path: Path) -> None:
        source = self._remote(workload, stage, version)
        if not self.fs.exists(f"{source}/{MANIFEST}"):
            return
        staging = path.parent / f".download-{version}-{uuid.uuid4().hex[:6]}"
        try:
            files = [name for name in self.fs.find(source) if not name.endswith(f"/{MANIFEST}")]
            if files:
                self.fs.get(files, [str(staging / name[len(source) + 1:]) for name in files])
            staging.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(f"{source}/{MANIFEST}", str(staging / MANIFEST))  # last: the copy is complete
            with contextlib.suppress(OSError):  # another process cached the same version first
                staging.rename(path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def versions(self, workload: str, stage: str) -> list[str]:
        if self.fs is not None:
            stage_dir = self._remote(workload, stage)
            if not self.fs.exists(stage_dir):
                return []
            return sorted(name.rsplit("/", 1)[-1] for name in self.fs.ls(stage_dir, detail=False)
                          if self.fs.exists(f"{name}/{MANIFEST}"))
        stage_dir = self._stage_dir(workload, stage)
        if not stage_dir.exists():
            return []
        return sorted(p.name for p in stage_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
