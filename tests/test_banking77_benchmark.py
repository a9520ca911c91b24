"""The Banking77 benchmark's --quick mode on the real bundled model (what CI can afford)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_quick_banking77_run_prints_its_figures():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "banking77.py"), "--quick", "--cascade"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["test_rows"] == 77 and figures["device"] == "cpu" and figures["quick"] is True
    assert figures["accuracy"] > 0.05  # chance is 1/77; 20 s of training already gets ~0.25
    assert figures["train_steps"] > 0 and figures["tokens_per_s"] > 0 and figures["baseline_tokens_per_s"] > 0
    # the cascade, calibrated on 77 rows carved from train.csv: a 20-second model is rarely sure enough to cover any
    assert figures["calibration_rows"] == 77 and figures["full_accuracy"] == figures["accuracy"]
    assert 0 <= figures["coverage"] <= 1 and figures["blended_accuracy"] >= figures["full_accuracy"]
    assert figures["small_usd_per_1k"] > 0
    assert figures["blended_usd_per_1k"] == pytest.approx(
        figures["small_usd_per_1k"] + (1 - figures["coverage"]) * figures["frontier_usd_per_1k"], abs=1e-4)


def test_without_the_data_it_stops_and_names_the_setting(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "banking77.py"), "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "DISTILLERY_DATA": str(tmp_path)})
    assert done.returncode != 0
    assert f"the banking77 dataset is not in {tmp_path}: set DISTILLERY_DATA" in done.stderr
    assert "banking77/train.csv and banking77/test.csv" in done.stderr


def test_quick_students_run_compares_the_candidates_and_serves_the_chosen_one_as_evaluated():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "banking77.py"), "--quick", "--students"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| student | train s | validation accuracy |" in done.stdout  # the candidates' table, before the JSON
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert [c["kind"] for c in figures["candidates"]] == ["generative", "classifier"] and figures["test_rows"] == 77
    [chosen] = [c for c in figures["candidates"] if c["chosen"]]
    assert figures["chosen"] == chosen["name"] and chosen["reason"].startswith("chosen: ")
    assert all(c["test"]["train_seconds"] > 0 and c["requests_per_s"] > 0 for c in figures["candidates"])
    assert figures["served_rps_c16"] > 0 and figures["served_answers_match_eval"] == 1.0
    assert figures["pair_on_test"]["name"] == "generative+classifier" and 0 <= figures["pair_on_test"]["coverage"] <= 1


def test_quick_gpu_check_runs_on_cpus_too():
    """The GPU check's benchmark (scripts/gpu-check runs it on a GPU machine) in its quick mode on this machine."""
    from distillery.models import bundled_encoder_dir, bundled_model_dir

    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--quick", "--encoder",
                           str(bundled_encoder_dir()), "--generative", str(bundled_model_dir())], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["device"] == "cpu" and figures["quick"] is True and figures["test_rows"] == 77
    for name in ("full", "lora"):
        assert 0 <= figures[f"{name}_accuracy"] <= 1 and figures[f"{name}_served_rps_c16"] > 0
    assert figures["generative_served_rps_c16"] > 0 and figures["full_vs_generative_served_rps_c16"] > 0
