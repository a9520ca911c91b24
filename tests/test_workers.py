"""Where the model-loading steps run: the Kubernetes pod that dagster-k8s would submit (no cluster here)."""

import dagster as dg
import pytest
from dagster_k8s.pipes import build_pod_body

from resources import WorkerLauncherResource
from resources.workers import EVALUATE, TRAIN_LORA


def test_kubernetes_pod_requests_a_gpu_and_mounts_the_artifacts():
    launcher = WorkerLauncherResource(mode="kubernetes", image="registry.example/distillery:1", gpus=1,
                                        node_selector={"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
                                        artifacts_volume_claim="distillery-artifacts", env_secret="mlflow-credentials")
    pod = build_pod_body(pod_name="train-banking77", image=launcher.image, command=["python", "-m", TRAIN_LORA],
                         env_vars={"DAGSTER_PIPES_CONTEXT": "x"}, base_pod_meta=None,
                         base_pod_spec=launcher.pod_spec())
    [container] = pod.spec.containers
    assert container.image == "registry.example/distillery:1"
    assert container.command == ["python", "-m", "workers.train_lora"]
    assert container.resources.limits["nvidia.com/gpu"] == "1" and container.resources.requests["nvidia.com/gpu"] == "1"
    assert pod.spec.node_selector == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert pod.spec.tolerations[0].key == "nvidia.com/gpu"
    assert pod.spec.restart_policy == "Never"
    assert pod.spec.volumes[0].persistent_volume_claim.claim_name == "distillery-artifacts"
    assert container.volume_mounts[0].mount_path == "/data/distillery"
    assert container.env_from[0].secret_ref.name == "mlflow-credentials"
    assert any(e.name == "DAGSTER_PIPES_CONTEXT" for e in container.env)


def test_a_cpu_pod_asks_for_no_gpu():
    spec = WorkerLauncherResource(mode="kubernetes", image="i", gpus=0).pod_spec()
    assert "nvidia.com/gpu" not in spec["containers"][0]["resources"]["limits"] and "tolerations" not in spec


def test_kubernetes_mode_needs_an_image():
    context = dg.build_asset_context()
    with pytest.raises(dg.Failure, match="image is required"):
        WorkerLauncherResource(mode="kubernetes").launch(context, EVALUATE, extras={})
