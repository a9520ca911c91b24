import os
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from distillery.errors import DistilleryError
from distillery.settings import public_dataset

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


POSTGRES_ADMIN_URL = os.environ.get("DISTILLERY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def distillery_home(tmp_path, monkeypatch) -> Path:
    """A fresh data directory: log store, artifacts, MLflow store and endpoints under tmp_path."""
    home = tmp_path / "home"
    monkeypatch.setenv("DISTILLERY_HOME", str(home))
    monkeypatch.delenv("DISTILLERY_LOG_STORE_URL", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A randomly initialised 2-layer Llama with the bundled SmolLM2 tokenizer and chat template."""
    from support.tiny_model import save_tiny_model

    return str(save_tiny_model(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="session")
def postgres_admin() -> sa.Engine:
    engine = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {exc}")
    return engine


@pytest.fixture
def new_postgres_database(postgres_admin):
    """Makes new, empty PostgreSQL databases (returns each one's URL); all dropped after the test."""
    names = []

    def create() -> str:
        names.append(f"distillery_test_{uuid.uuid4().hex[:10]}")
        with postgres_admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{names[-1]}"'))
        return postgres_admin.url.set(database=names[-1]).render_as_string(hide_password=False)

    yield create
    with postgres_admin.connect() as conn:
        for name in names:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def postgres_url(new_postgres_database):
    """A new, empty PostgreSQL database, dropped after the test."""
    return new_postgres_database()


@pytest.fixture(params=["sqlite", "postgres"])
def log_store_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'logs.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA adapter trained for a few steps on the tiny model to answer 'billing' or 'shipping'."""
    from datasets import Dataset

    from distillery.training import TrainingConfig, train_lora

    rows = [{"messages": [{"role": "user", "content": f"ticket {i}"},
                          {"role": "assistant", "content": ["billing", "shipping"][i % 2]}]} for i in range(16)]
    target = tmp_path_factory.mktemp("tiny-adapter")
    train_lora(Dataset.from_list(rows), Dataset.from_list(rows[:4]), tiny_model_dir, target,
               TrainingConfig(rank=8, alpha=16, epochs=30, batch_size=8, learning_rate=1e-2, warmup_fraction=0))
    return target


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """$DISTILLERY_DATA (default ../shared/data beside the checkout; never copied into the repository)."""
    try:
        return public_dataset("banking77").parent
    except DistilleryError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def banking77_train(shared_data) -> Path:
    return shared_data / "banking77" / "train.csv"


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """An S3-compatible server on loopback: moto in server mode (a real HTTP server; no client is patched)."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"the S3-compatible test server (moto) did not start on {endpoint}")
            time.sleep(0.2)
    yield endpoint
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch) -> str:
    """A new bucket on the loopback S3 server, with the credentials and endpoint MLflow and boto3 read."""
    import boto3

    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                        "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_S3_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(name, value)
    bucket = f"distillery-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return bucket
