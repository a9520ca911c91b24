"""The real bundled SmolLM2-135M-Instruct through the whole lifecycle, on a handful of demo rows."""

import openai
import pytest

from distillery import lifecycle
from distillery.demo import QUEUES, WORKLOAD, demo_messages, send_demo_traffic
from distillery.evaluation import GatePolicy
from distillery.models import resolve_base_model
from distillery.serving import Endpoints
from distillery.store import ArtifactStore, LogStore
from distillery.training import CHAMPION, Tracker, TrainingConfig

pytestmark = pytest.mark.slow


def test_fine_tuning_the_bundled_model_beats_it_on_held_out_tickets(distillery_home):
    assert send_demo_traffic(100).written == 100
    store = LogStore()

    artifacts, tracker, endpoints = ArtifactStore(), Tracker(), Endpoints()
    base_model = resolve_base_model(None)
    lifecycle.snapshot_raw_logs(store, artifacts, WORKLOAD)
    lifecycle.build_curated_dataset(artifacts, WORKLOAD, seed=0, validation_fraction=0.05, test_fraction=0.1,
                                    min_rows=20, min_train_rows=16)
    trained = lifecycle.train_adapter(artifacts, tracker, WORKLOAD, base_model,
                                      {"max_steps": 30, "batch_size": 8, "learning_rate": 3e-3}, run_tags={},
                                      candidates=[{"kind": "generative"}])
    [student] = trained.candidates
    first = tracker.client.get_metric_history(student["mlflow_run_id"], "train_loss")[0].value
    assert student["status"] == "trained" and student["train_loss_mean_last_10_steps"] < first / 4

    # Any gap passes: this run proves the path, not that 30 steps reach the frontier.
    artifact, report = lifecycle.evaluate_adapter(artifacts, tracker, WORKLOAD, batch_size=16,
                                                  policy=GatePolicy(max_gap_to_frontier=1.0, min_test_rows=1))
    version = artifact.manifest["model_version"]
    assert report.rows >= 8  # about a tenth of the ~90 rows left after duplicate removal, per label
    # A classification workload: both models may only answer with a queue name (constrained decoding),
    # so the base model guesses among 8 queues and the fine-tuned one has to beat the guess.
    assert all(example[name] in QUEUES for example in report.examples for name in ("base", "fine-tuned"))
    assert report.candidate.agreement >= report.scores["base"].agreement + 0.3, report.markdown()

    try:
        deployed = lifecycle.deploy_adapter(artifacts, tracker, endpoints, WORKLOAD)
        assert deployed.promoted, deployed.reason
        assert tracker.alias_version(WORKLOAD, CHAMPION) == version
        client = openai.OpenAI(base_url=deployed.endpoint.url, api_key="local", max_retries=0)
        assert deployed.endpoint.model == f"{WORKLOAD}-v{version}"
        answer = client.chat.completions.create(model=deployed.endpoint.model,
                                                messages=demo_messages("My parcel never arrived"))
        assert answer.choices[0].message.content in QUEUES
    finally:
        endpoints.stop(WORKLOAD)
