from pathlib import Path

import pytest

from distillery.errors import DistilleryError
from distillery.store import ArtifactStore


def test_publish_makes_the_newest_complete_version_latest(tmp_path):
    store = ArtifactStore(tmp_path)
    with store.publish("triage", "curated_dataset", {"rows": 1}) as folder:
        (folder / "data.txt").write_text("one")
    manifest = {"rows": 2}
    with store.publish("triage", "curated_dataset", manifest) as folder:
        (folder / "data.txt").write_text("two")
        manifest["added_inside"] = True
    latest = store.latest("triage", "curated_dataset")
    assert (latest.path / "data.txt").read_text() == "two"
    assert latest.manifest["rows"] == 2 and latest.manifest["added_inside"] is True
    assert len(store.versions("triage", "curated_dataset")) == 2


def test_a_crash_mid_write_leaves_the_previous_version_latest_and_no_debris(tmp_path):
    store = ArtifactStore(tmp_path)
    with store.publish("triage", "lora_adapter") as folder:
        (folder / "weights").write_text("good")
    good = store.latest("triage", "lora_adapter").version

    with pytest.raises(RuntimeError):
        with store.publish("triage", "lora_adapter") as folder:
            (folder / "weights").write_text("half")
            raise RuntimeError("training crashed")

    assert store.latest("triage", "lora_adapter").version == good
    assert store.versions("triage", "lora_adapter") == [good]
    assert not [p for p in (tmp_path / "triage" / "lora_adapter").iterdir() if p.name.startswith(".tmp")]


def test_missing_stage_names_the_workload_and_the_step_to_run(tmp_path):
    with pytest.raises(DistilleryError, match=r"workload 'triage' has no eval_report yet: materialize eval_report"):
        ArtifactStore(tmp_path).latest("triage", "eval_report", needed_by="deployed_endpoint")


def test_workload_names_must_be_path_safe(tmp_path):
    with pytest.raises(ValueError, match="invalid workload name"):
        ArtifactStore(tmp_path).latest("../etc", "raw_llm_logs")


def test_on_an_object_store_a_version_published_on_one_machine_is_read_on_another(s3_endpoint, s3_bucket, tmp_path):
    root, options = f"s3://{s3_bucket}/artifacts", {"endpoint_url": s3_endpoint}
    here = ArtifactStore(root, options, cache_dir=tmp_path / "cache-here")
    with here.publish("triage", "curated_dataset", {"rows": 2}) as folder:
        (folder / "dataset").mkdir()
        (folder / "dataset" / "part-0.txt").write_text("two rows")
    with pytest.raises(RuntimeError):
        with here.publish("triage", "curated_dataset") as folder:
            (folder / "half.txt").write_text("half")
            raise RuntimeError("curation crashed")

    # Another machine: its own cache, the same bucket.
    there = ArtifactStore(root, options, cache_dir=tmp_path / "cache-there")
    latest = there.latest("triage", "curated_dataset")
    assert there.versions("triage", "curated_dataset") == [latest.version]
    assert latest.manifest["rows"] == 2 and (latest.path / "dataset" / "part-0.txt").read_text() == "two rows"
    assert latest.path.is_relative_to(tmp_path / "cache-there")
    import boto3

    keys = sorted(o["Key"] for o in boto3.client("s3", endpoint_url=s3_endpoint)
                  .list_objects_v2(Bucket=s3_bucket)["Contents"])
    assert keys == [f"artifacts/triage/curated_dataset/{latest.version}/dataset/part-0.txt",
                    f"artifacts/triage/curated_dataset/{latest.version}/manifest.json",
                    "artifacts/triage/curated_dataset/LATEST"]
    with pytest.raises(DistilleryError, match=f"no curated_dataset version 'nope' under s3://{s3_bucket}/artifacts"):
        there.get("triage", "curated_dataset", "nope")
    with pytest.raises(DistilleryError, match="workload 'triage' has no lora_adapter yet"):
        there.latest("triage", "lora_adapter")


def test_a_worker_resolves_a_base_model_folder_on_the_object_store_once(s3_endpoint, s3_bucket, tiny_model_dir,
                                                                         tmp_path, monkeypatch):
    import boto3

    from distillery.models import resolve_base_model

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)  # how a pod names an S3-compatible server
    monkeypatch.setenv("DISTILLERY_MODEL_CACHE", str(tmp_path / "models"))
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    for path in Path(tiny_model_dir).iterdir():
        client.upload_file(str(path), s3_bucket, f"models/tiny/{path.name}")
    local = Path(resolve_base_model(f"s3://{s3_bucket}/models/tiny"))
    assert local.is_relative_to(tmp_path / "models")
    assert sorted(p.name for p in local.iterdir()) == sorted(p.name for p in Path(tiny_model_dir).iterdir())
    client.delete_object(Bucket=s3_bucket, Key="models/tiny/config.json")
    assert Path(resolve_base_model(f"s3://{s3_bucket}/models/tiny")) == local  # the cached copy, not refetched
    with pytest.raises(DistilleryError, match=r"base model s3://.*/models/none has no config.json"):
        resolve_base_model(f"s3://{s3_bucket}/models/none")
