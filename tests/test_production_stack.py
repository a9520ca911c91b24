"""The whole lifecycle on the production stack, all of it real and on loopback: the Dagster instance
(dagster-postgres), MLflow's backend store and the log store on PostgreSQL, the artifacts and MLflow's
artifacts on an S3-compatible server; training and evaluation in Pipes workers that open the same stores."""

import time

import boto3
import dagster as dg
import openai
import sqlalchemy as sa

from assets import LIFECYCLE_ASSETS, curated_dataset, eval_report, lora_adapter, raw_llm_logs, workload_partitions
from distillery.demo import QUEUES, WORKLOAD, demo_messages, send_demo_traffic
from distillery.serving import Endpoints
from distillery.training import CHAMPION, Tracker, registered_model_name
from resources import (ArtifactsResource, GatewayResource, JudgeResource, LogStoreResource, MlflowResource,
                       ServingResource, TrainerResource, WorkerLauncherResource)

# The generative student alone: the stack's path, not the choice among students (tests/test_pipeline.py has that).
FAST = {"ops": {"lora_adapter": {"config": {"max_steps": 3, "batch_size": 8, "rank": 4, "alpha": 8,
                                            "candidates": [{"kind": "generative"}]}},
                "eval_report": {"config": {"max_gap_to_frontier_points": 100, "min_test_rows": 1,
                                           "require_gain_over_champion": False}}}}


def test_the_whole_lifecycle_on_postgres_and_an_object_store(distillery_home, tiny_model_dir, new_postgres_database,
                                                             s3_endpoint, s3_bucket, monkeypatch):
    dagster_url, mlflow_url, logs_url = (new_postgres_database() for _ in range(3))
    # dagster-postgres speaks psycopg2; SQLAlchemy 2.1 reads a plain postgresql:// URL as psycopg 3.
    dagster_url = dagster_url.replace("postgresql://", "postgresql+psycopg2://")
    monkeypatch.setenv("DISTILLERY_LOG_STORE_URL", logs_url)  # the gateway's own setting, for the demo traffic
    store_options = {"endpoint_url": s3_endpoint}
    resources = {
        "log_store": LogStoreResource(url=logs_url),
        "artifacts": ArtifactsResource(root=f"s3://{s3_bucket}/artifacts", storage_options=store_options),
        "mlflow": MlflowResource(tracking_uri=mlflow_url, artifact_root=f"s3://{s3_bucket}/mlflow"),
        "trainer": TrainerResource(base_model=tiny_model_dir),
        "serving": ServingResource(startup_timeout_s=120),
        "workers": WorkerLauncherResource(),
        "judge": JudgeResource(), "gateway": GatewayResource(),
    }
    assert send_demo_traffic(60, concurrency=2).written == 60
    started = time.monotonic()
    try:
        with dg.instance_for_test(overrides={"storage": {"postgres": {"postgres_url": dagster_url}}}) as instance:
            instance.add_dynamic_partitions(workload_partitions.name, [WORKLOAD])
            result = dg.materialize(LIFECYCLE_ASSETS, partition_key=WORKLOAD, instance=instance, resources=resources,
                                    run_config=FAST, raise_on_error=False)
            print(f"whole lifecycle on Postgres + S3: {time.monotonic() - started:.1f} s")
            assert result.success
            # The run, its events and the recorded versions live in Postgres.
            [run] = instance.get_runs()
            assert run.run_id == result.run_id and run.is_success
            [record] = instance.fetch_materializations(lora_adapter.key, limit=1).records
            adapter_version = record.asset_materialization.metadata["version"].value
        with sa.create_engine(dagster_url).connect() as conn:
            assert conn.execute(sa.text("select count(*) from runs")).scalar_one() == 1

        # Every artifact went to the bucket; the adapter version Dagster recorded is there, manifest included.
        keys = {o["Key"] for page in boto3.client("s3", endpoint_url=s3_endpoint).get_paginator("list_objects_v2")
                .paginate(Bucket=s3_bucket) for o in page.get("Contents", [])}
        for asset in (raw_llm_logs, curated_dataset, lora_adapter, eval_report):
            stage = asset.key.to_user_string()
            assert f"artifacts/{WORKLOAD}/{stage}/LATEST" in keys, stage
        assert f"artifacts/{WORKLOAD}/lora_adapter/{adapter_version}/candidates/generative/adapter_model.safetensors" in keys

        # MLflow: runs and registry in Postgres, the run's artifacts in the bucket.
        tracker = Tracker(mlflow_url)
        assert tracker.alias_version(WORKLOAD, CHAMPION) == "1"
        version = tracker.client.get_model_version(registered_model_name(WORKLOAD), "1")
        artifact_uri = tracker.client.get_run(version.run_id).info.artifact_uri
        assert artifact_uri.startswith(f"s3://{s3_bucket}/mlflow/")
        assert any(key.startswith("mlflow/") and key.endswith("adapter/adapter_model.safetensors") for key in keys)

        # The served model answers under the label policy recorded with the adapter.
        [endpoint] = Endpoints().all()
        client = openai.OpenAI(base_url=endpoint.url, api_key="local", max_retries=0)
        answer = client.chat.completions.create(model=f"{WORKLOAD}-v1", messages=demo_messages("I was charged twice"),
                                                max_tokens=4)
        assert answer.choices[0].message.content in QUEUES
    finally:
        for endpoint in Endpoints().all():
            Endpoints().stop(endpoint.workload)
