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
