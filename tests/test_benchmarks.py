"""Every documented benchmark's --quick mode, from the checkout with no variables set, as a person runs it: a change
that breaks a benchmark fails here. The figures are checked for what they must say (nothing lost, every answered call
stored, answers equal to the evaluated ones), never for speed."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str, timeout: int = 600, **env: str) -> dict:
    clean = {name: value for name, value in os.environ.items()
             if not name.startswith(("DISTILLERY_", "DAGSTER_", "MLFLOW_"))}
    # stderr to a file: a server the benchmark started and failed to stop would hold a pipe open, and the test would
    # wait for it until its timeout instead of failing at once with the benchmark's error
    with tempfile.TemporaryFile("w+") as stderr:
        done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=timeout,
                              env={**clean, "HF_HUB_OFFLINE": "1", **env})
        stderr.seek(0)
        assert done.returncode == 0, stderr.read()[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mix", ["default", "tools", "stream"])
def test_gateway_benchmark_loses_nothing_and_prints_every_ratio(mix):
    workers = ["--workers", "2", "--peers"] if mix == "default" else []  # the sides with workers, once
    figures = _run("gateway.py", "--quick", "--mix", mix, *workers)
    assert figures["quick"] is True and figures["sent_through_gateway"] == 330 and figures["mix"] == mix
    assert figures["stored"] == figures["sent_through_gateway"] and figures["lost"] == 0
    assert figures["still_in_journal"] == 0 and figures["uvicorn_lost"] == 0
    for name in ("p50_added_ms", "p99_added_ms", "throughput_ratio", "gateway_vs_bare", "uvicorn_vs_hand_written",
                 "bare_cpu_us", "gateway_cpu_us", "gateway_writer_cpu_us"):
        assert isinstance(figures[name], (int, float)), name
    assert figures["client_failures_gateway"] == figures["client_failures_direct"]  # the stub's own 1% of 500s
    if workers:
        assert figures["workers"] == 2 and figures["workers_lost"] == 0 and figures["workers_vs_one"] > 0
        assert figures["client_failures_workers"] == figures["client_failures_direct"]
        # Each peer is measured where scripts/setup-peers installed it, and named with the reason where not.
        expected = {"litellm": (ROOT / ".venv-peers" / "bin" / "litellm").exists(),
                    "nginx": bool(shutil.which("nginx") or shutil.which("/usr/sbin/nginx"))}
        for peer, installed in expected.items():
            if installed:
                assert figures[f"{peer}_rps"] > 0 and figures[f"vs_{peer}_rps"] > 0, peer
            else:
                assert "setup-peers" in figures["peers_missing"][peer]
        if expected["nginx"]:
            assert figures["nginx_calls_recorded"] >= figures["requests"]  # its access log
        if expected["litellm"]:
            assert figures["litellm_calls_recorded"] == 0 and "offline" in figures["litellm_records_calls"]


@pytest.mark.parametrize("workers", [1, 2])
def test_gateway_killed_under_load_loses_no_answered_call(workers):
    """1: the gateway killed and started again on its journal; 2: one worker killed, the other serving on."""
    figures = _run("gateway.py", "--kill", "--quick", "--workers", str(workers))
    [run] = figures["runs"]
    assert run["answered_200"] > 100 and run["missing"] == 0
    assert run["sent"] > run["answered_200"]  # calls were in flight when it died
    if workers == 2:
        assert run["worker_started_again"] is True
        assert run["connection_errors"] <= run["connections_on_killed_worker"]  # only its callers saw the kill


def test_cutover_benchmark_falls_back_and_rolls_back():
    figures = _run("cutover.py", "--quick")
    assert figures["failed_client_requests"] == 0 and figures["rolled_back"] is True
    assert figures["answered_by_small_model_before_the_kill"] > 0
    assert abs(figures["canary_share"] - figures["canary_target"]) < 3
    # every covered cascade call answered by the small model; the overhead figures printed (not asserted)
    assert figures["cascade_answered_by_small_model"] == 1.0
    assert figures["cascade_vs_small_rps"] > 0 and "cascade_added_p50_ms" in figures


def test_autopilot_benchmark_walks_the_real_gateway_to_small_and_back():
    figures = _run("autopilot.py", "--quick")
    assert figures["quick"] is True and figures["n_runs"] == 20
    assert figures["e2e_stages"] == ["shadow", "canary 10%", "canary 50%", "small", "canary 50%"]
    assert figures["e2e_failed_client_calls"] == 0 and len(figures["e2e_events"]) == 4
    # 20 runs are too few for the rates; that the statistics were computed on every scenario is what is checked
    assert figures["promote_calls_median"] > 0 and figures["detect_calls_median"] > 0
    assert {"false_rollback_rate", "missed_drop_rate", "baseline_false_rollback_rate"} <= set(figures)
    assert figures["at_0.85"]["detect_calls_median"] > 0


def test_curation_benchmark_finds_the_planted_copies_and_pii():
    figures = _run("curation.py", "--quick")
    assert figures["rows"] == 2000 and figures["near_dup_recall"] >= 0.95 and figures["pii_recall"] >= 0.99
    assert figures["pii_false_positive_rate"] <= 0.01 and figures["baseline_seconds"] > 0


@pytest.mark.slow
def test_eval_throughput_benchmark_on_the_bundled_model():
    figures = _run("eval_throughput.py", "--quick")
    assert figures["rows"] == 32 and figures["constrained_to_labels"] is True
    assert figures["rows_per_s"] > 0 and figures["sequential_rows_per_s"] > 0


@pytest.mark.slow
def test_serving_benchmark_serves_what_was_evaluated():
    figures = _run("serving.py", "--quick")
    assert figures["rows"] == 16 and figures["served_rps_c1"] > 0 and figures["served_rps_c4"] > 0
    assert figures["not_served_by_the_adapter_c4"] == 0 and figures["fallback_reasons"] == {}
    assert all(difference["explained"] == "near-tie" for difference in figures["differences"])


@pytest.mark.slow
def test_extraction_benchmark_reports_each_domain_grounded_and_not():
    figures = _run("extraction.py", "--quick")
    assert figures["quick"] is True and list(figures["domains"]) == ["Buses_1", "Events_1"]
    for domain in figures["domains"].values():
        assert domain["test_rows"] == 24 and domain["train_steps"] > 0
        for name in ("grounded", "ungrounded", "base_grounded"):
            assert 0 <= domain[name]["slot_f1"] <= 1 and domain[name]["rows_per_s"] > 0
        # grounded decoding cannot write a value the user did not write
        assert domain["grounded"]["uncopied_value_rate"] == 0 and domain["base_grounded"]["uncopied_value_rate"] == 0
    serving = figures["domains"]["Buses_1"]["serving"]
    assert serving["served_requests_per_s"] > 0 and 0 < serving["grammar_build_share_of_answer"] < 1
    assert figures["mean_slot_f1"] == pytest.approx(
        sum(d["grounded"]["slot_f1"] for d in figures["domains"].values()) / 2, abs=1e-4)


@pytest.mark.parametrize("script", ["curation.py", "eval_throughput.py", "extraction.py"])
def test_without_the_data_a_benchmark_stops_and_names_the_setting(script, tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "DISTILLERY_DATA": str(tmp_path)})
    assert done.returncode != 0 and f"is not in {tmp_path}: set DISTILLERY_DATA" in done.stderr


@pytest.mark.slow
def test_extraction_students_benchmark_chooses_per_domain_and_copies_every_value():
    figures = _run("extraction.py", "--quick", "--students", "--validation-rows", "24")
    assert figures["quick"] is True and list(figures["domains"]) == ["Buses_1", "Events_1"]
    for domain in figures["domains"].values():
        assert set(domain["candidates"]) == {"generative", "span_tagger"} and domain["chosen"] in domain["candidates"]
        # a grounded generative student and a span tagger both write only the user's words
        assert all(c["uncopied_value_rate"] == 0 for c in domain["candidates"].values())
        assert domain["served_requests_per_s"] > 0 and domain["served_answers_match_eval"] == 1.0
    assert figures["uncopied_value_rate_max"] == 0
