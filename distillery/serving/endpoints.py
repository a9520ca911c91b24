"""Model servers on this machine, one per base model, and which workload's adapters each serves.

``Endpoints`` starts a server as a detached process, so an endpoint outlives the Dagster
run that deployed it. A new adapter must load and answer a real request before it is recorded
as the workload's endpoint; if it fails, the endpoint serving now keeps serving.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, TypeVar

from distillery import wire
from distillery.errors import DistilleryError
from distillery.serving.model_server import BASE_MODEL_NAME, adapter_mismatch
from distillery.settings import home, validate_workload
from distillery.students import CLASSIFIER, GENERATIVE, StudentCard, classifier_text, kind_of
from distillery.tasks import DecodingPolicy

Ready = TypeVar("Ready")


@dataclass
class Endpoint:
    workload: str
    url: str
    pid: int  # 0: a remote server this machine did not start
    model: str
    adapter_path: str  # as the server reads it
    base_model: str
    log_path: str
    started_at: str
    note: str = ""  # how the deploy differed from what was asked (an encoder student served locally, not by vLLM)
    api: str = wire.CHAT_API  # how it is asked (wire.SMALL_MODEL_APIS): chat completions, or vLLM's classify route


LOCAL, VLLM, REMOTE = "local", "vllm", "remote"
BACKENDS = (LOCAL, VLLM, REMOTE)


class Endpoints:
    """Model servers and which workload's adapter each serves (``<state_dir>/<workload>.json``).

    One server per base model serves every workload's adapters on it. ``backend`` says which:
    ``local`` starts ``python -m distillery.serving.model_server`` (transformers, CPU or GPU);
    ``vllm`` starts vLLM's OpenAI server (``vllm_python -m vllm.entrypoints.openai.api_server``, with
    run-time adapter loading; ``vllm_args`` adds flags such as ``--dtype float32`` on CPUs);
    ``remote`` starts nothing and loads adapters into the vLLM server at ``remote_url``, reading them
    at the path the server sees (``remote_path_map`` rewrites a local path prefix to the server's).
    All speak the same OpenAI API and load adapters through the same ``/v1/load_lora_adapter`` route.

    Encoder students: with ``vllm``, a classifier is served by a vLLM server of its own as a pooling model (its folder
    is a whole model, not an adapter), asked through vLLM's ``/classify`` (the endpoint's ``api``); a span tagger (vLLM
    tags tokens, the answer needs them joined into words and fields) and any encoder student under ``remote`` (a
    remote server serves the model it was started with) are served by the local server, and the endpoint's ``note``
    says so.
    """

    def __init__(self, state_dir: Path | None = None, host: str = "127.0.0.1", startup_timeout_s: float = 300,
                 backend: str = LOCAL, max_lora_rank: int = 64, *, vllm_python: str | None = None,
                 vllm_args: list[str] | None = None, remote_url: str | None = None,
                 remote_path_map: dict[str, str] | None = None):
        if backend not in BACKENDS:
            raise ValueError(f"unknown serving backend {backend!r}: use one of {', '.join(BACKENDS)}")
        if backend == REMOTE and not remote_url:
            raise ValueError("the remote serving backend needs remote_url, the vLLM server's OpenAI base URL")
        self.state_dir = Path(state_dir) if state_dir else home() / "endpoints"
        self.host = host
        self.startup_timeout_s = startup_timeout_s
        self.backend = backend
        self.max_lora_rank = max_lora_rank if backend in (VLLM, REMOTE) else None
        self.vllm_python = vllm_python or sys.executable
        self.vllm_args = list(vllm_args or [])
        self.remote_url = remote_url.rstrip("/") if remote_url else None
        self.remote_path_map = dict(remote_path_map or {})

    def deploy(self, workload: str, base_model: str, adapter_dir: Path, model_name: str,
               probe_messages: list[dict], policy: DecodingPolicy | None = None,
               needs_confidence: bool = False) -> Endpoint:
        """Serve ``adapter_dir`` as ``model_name``; it must answer ``probe_messages`` under ``policy`` before this
        returns (with its tokens' log-probabilities when ``needs_confidence``: a cascade route decides by them).

        When a server for the same base model is running (this workload's or another's, or the remote
        one), the adapter is loaded into it beside the ones it has (they stay loaded: a route can go
        back to them at once); otherwise a new server starts, and the workload's old one stops unless
        another workload still uses it. Either way, if the new adapter does not load or answer, the
        endpoint serving now is left as it was and the error says why.
        """
        validate_workload(workload)
        kind = kind_of(Path(adapter_dir))
        if kind != GENERATIVE and not (self.backend == LOCAL or (self.backend == VLLM and kind == CLASSIFIER)):
            local = Endpoints(self.state_dir, self.host, self.startup_timeout_s, LOCAL)
            endpoint = local.deploy(workload, base_model, adapter_dir, model_name, probe_messages, policy,
                                    needs_confidence)
            why = ("vLLM tags tokens, and a span tagger's answer joins words into fields" if kind != CLASSIFIER else
                   "a remote vLLM server serves the model it was started with, and a classifier is a whole model")
            endpoint = replace(endpoint, note=f"the {kind} student is served by the local model server: {why}")
            local._write_state(endpoint)
            return endpoint
        # A remote server's model lives at its own path: its base model is checked by vLLM when it loads.
        problem = adapter_mismatch(adapter_dir, None if self.backend == REMOTE else base_model,
                                   max_rank=self.max_lora_rank)
        if problem:
            raise DistilleryError(f"workload {workload!r}: refusing to deploy {adapter_dir}: {problem}")
        previous = self.current(workload)
        if kind == CLASSIFIER:  # every classifier is a whole model: a vLLM server of its own
            shared = None
        elif self.backend == REMOTE:
            shared = self._remote_server(base_model)
        else:
            shared = next((e for e in self.all() if e.pid and e.base_model == base_model and _answers(e.url)), None)
        if shared:
            endpoint = self._load_beside(shared, self._server_path(adapter_dir), model_name, probe_messages, policy,
                                         needs_confidence)
            endpoint = replace(endpoint, workload=workload)
        else:
            endpoint = self._start_server(workload, kind, base_model, adapter_dir, model_name, probe_messages, policy,
                                          needs_confidence)
        self._write_state(endpoint)
        if previous and previous.pid and previous.pid != endpoint.pid and not any(
                e.pid == previous.pid for e in self.all() if e.workload != workload):
            _terminate(previous.pid)
        return endpoint

    def _remote_server(self, base_model: str) -> Endpoint:
        if not _answers(self.remote_url):
            raise DistilleryError(f"the remote model server at {self.remote_url} does not answer GET /models: "
                                  "start it, or check ServingResource.remote_url")
        return Endpoint("", self.remote_url, 0, "", "", base_model, "", dt.datetime.now(dt.timezone.utc).isoformat())

    def _server_path(self, adapter_dir: Path) -> str:
        """The adapter's path as the model server reads it."""
        path = str(adapter_dir)
        for local, remote in self.remote_path_map.items():
            if path.startswith(local):
                return remote + path[len(local):]
        return path

    def _start_server(self, workload: str, kind: str, base_model: str, adapter_dir: Path, model_name: str,
                      probe_messages: list[dict], policy: DecodingPolicy | None,
                      needs_confidence: bool = False) -> Endpoint:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
        ready_file = self.state_dir / f".{workload}-{stamp}.ready"
        log_path = self.state_dir / f"{workload}-{stamp}.log"
        ready_file.unlink(missing_ok=True)
        env = None
        classifier = self.backend == VLLM and kind == CLASSIFIER
        if classifier:
            port = _free_port(self.host)
            card = StudentCard.load(Path(adapter_dir))
            # The server cuts a request to --max-model-len (truncate_prompt_tokens -1), as evaluation cuts it to the
            # student's max_seq_len; after vllm_args, so that it wins over a generative server's length.
            command = [self.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(adapter_dir),
                       "--served-model-name", model_name, "--runner", "pooling", "--host", self.host,
                       "--port", str(port), *self.vllm_args, "--max-model-len", str(card.max_seq_len)]
        elif self.backend == VLLM:
            port = _free_port(self.host)
            command = [self.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", base_model,
                       "--served-model-name", BASE_MODEL_NAME, "--enable-lora",
                       "--max-lora-rank", str(self.max_lora_rank), "--host", self.host, "--port", str(port),
                       "--lora-modules", f"{model_name}={adapter_dir}",
                       # llguidance, as the local engine: a grounded route's Lark grammars (substring terminals) and
                       # every JSON schema decode the same way on both. vLLM takes JSON whitespace from this server-wide
                       # setting, not from a request: none, as the compact answers Distillery trains (with it on, a
                       # label adapter under a tool schema spent 160 tokens on blanks: tests/test_vllm.py)
                       "--structured-outputs-config", '{"backend": "guidance", "disable_any_whitespace": true}',
                       *self.vllm_args]
            env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
        else:
            command = [sys.executable, "-m", "distillery.serving.model_server", "--base-model", base_model,
                       "--adapter", f"{model_name}={adapter_dir}", "--host", self.host, "--port", "0",
                       "--ready-file", str(ready_file)]
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            if self.backend == VLLM:
                url = f"http://{self.host}:{port}/v1"
                self._wait_until_ready(process, log_path, lambda: url if _answers(url) else None, poll_s=1)
            else:
                bound = self._wait_until_ready(process, log_path, lambda: _read_ready_file(ready_file), poll_s=0.2)
                url = f"http://{self.host}:{bound}/v1"
            if classifier:
                _probe_classifier(url, model_name, probe_messages, policy)
            else:
                _probe(url, model_name, probe_messages, policy, needs_confidence)
        except BaseException:
            _terminate(process.pid)
            raise
        finally:
            ready_file.unlink(missing_ok=True)
        return Endpoint(workload, url, process.pid, model_name, str(adapter_dir), base_model, str(log_path),
                        dt.datetime.now(dt.timezone.utc).isoformat(),
                        api=wire.CLASSIFY_API if classifier else wire.CHAT_API)

    def _load_beside(self, running: Endpoint, adapter_path: str, model_name: str, probe_messages: list[dict],
                     policy: DecodingPolicy | None, needs_confidence: bool = False) -> Endpoint:
        if model_name not in _served_models(running.url):
            status, text = _post_json(f"{running.url}/load_lora_adapter",
                                      {"lora_name": model_name, "lora_path": adapter_path})
            if status != 200:
                raise DistilleryError(f"the model server at {running.url} refused adapter {adapter_path} "
                                      f"(HTTP {status}): {text[:500]}")
        try:
            _probe(running.url, model_name, probe_messages, policy, needs_confidence)
        except BaseException:
            _post_json(f"{running.url}/unload_lora_adapter", {"lora_name": model_name})
            raise
        return replace(running, model=model_name, adapter_path=adapter_path)

    def unload(self, workload: str, model_name: str) -> None:
        """Take an adapter version off the workload's server; the version the workload serves now stays."""
        endpoint = self.current(workload)
        if endpoint is None:
            raise DistilleryError(f"no endpoint is serving workload {workload!r}")
        if model_name == endpoint.model:
            raise DistilleryError(f"{model_name!r} is the version {workload!r} serves now: deploy another first")
        status, text = _post_json(f"{endpoint.url}/unload_lora_adapter", {"lora_name": model_name})
        if status != 200:
            raise DistilleryError(f"the model server at {endpoint.url} did not unload {model_name!r} "
                                  f"(HTTP {status}): {text[:500]}")

    def current(self, workload: str) -> Endpoint | None:
        state = self.state_dir / f"{validate_workload(workload)}.json"
        if not state.exists():
            return None
        endpoint = Endpoint(**json.loads(state.read_text()))
        return endpoint if (_alive(endpoint.pid) if endpoint.pid else _answers(endpoint.url)) else None

    def all(self) -> list[Endpoint]:
        if not self.state_dir.exists():
            return []
        found = (self.current(p.stem) for p in sorted(self.state_dir.glob("*.json")))
        return [e for e in found if e]

    def stop(self, workload: str) -> bool:
        """Stop serving the workload. A server this machine started stops unless another workload's adapter is on
        it; on a remote server the workload's adapter is unloaded."""
        endpoint = self.current(workload)
        (self.state_dir / f"{workload}.json").unlink(missing_ok=True)
        if endpoint and not endpoint.pid:
            _post_json(f"{endpoint.url}/unload_lora_adapter", {"lora_name": endpoint.model})
        elif endpoint and not any(e.pid == endpoint.pid for e in self.all()):
            _terminate(endpoint.pid)
        return endpoint is not None

    def _write_state(self, endpoint: Endpoint) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / f".{endpoint.workload}.json.tmp"
        tmp.write_text(json.dumps(asdict(endpoint), indent=2))
        os.replace(tmp, self.state_dir / f"{endpoint.workload}.json")

    def _wait_until_ready(self, process: subprocess.Popen, log_path: Path,
                          ready: Callable[[], Ready | None], poll_s: float) -> Ready:
        """Poll ``ready`` until it returns something; fail when the server exits (with its log's tail) or time is up."""
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            found = ready()
            if found is not None:
                return found
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise DistilleryError(
                    f"model server exited with code {process.returncode} before it was ready:\n{tail}")
            time.sleep(poll_s)
        raise DistilleryError(f"model server not ready after {self.startup_timeout_s:.0f}s; its log: {log_path}")


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _read_ready_file(ready_file: Path) -> int | None:
    """The port the local server bound, once it has loaded its model and written the file."""
    return json.loads(ready_file.read_text())["port"] if ready_file.exists() else None


def _answers(url: str) -> bool:
    """A server whose process is alive can still be gone (killed, unreaped): it must answer too."""
    try:
        _served_models(url, timeout_s=10)
        return True
    except (OSError, ValueError, KeyError):
        return False


def _served_models(url: str, timeout_s: float = 30) -> list[str]:
    with urllib.request.urlopen(f"{url}/models", timeout=timeout_s) as answer:
        return [m["id"] for m in json.loads(answer.read())["data"]]


def _post_json(url: str, body: dict, timeout_s: float = 300) -> tuple[int, str]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            return answer.status, answer.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _probe(url: str, model: str, messages: list[dict], policy: DecodingPolicy | None,
           needs_confidence: bool = False) -> None:
    """A real chat request under the workload's decoding policy: the endpoint counts as healthy only if it answers
    it with an answer the policy allows (and, for a cascade route, with its tokens' log-probabilities)."""
    import openai

    policy = policy or DecodingPolicy()
    constraint = policy.structured_outputs()
    client = openai.OpenAI(base_url=url, api_key="local", timeout=120, max_retries=0)
    try:
        response = client.chat.completions.create(model=model, messages=messages, max_tokens=64,
                                                  logprobs=True if needs_confidence else openai.NOT_GIVEN,
                                                  extra_body={"structured_outputs": constraint} if constraint else None)
    except openai.APIError as exc:
        raise DistilleryError(f"model server at {url} failed the health-check request to {model!r}: {exc}") from exc
    text = response.choices[0].message.content if response.choices else None
    if not text:
        raise DistilleryError(f"model server at {url} returned an empty answer to the health-check request")
    if not policy.valid_answer(text):
        raise DistilleryError(f"model server at {url} answered the health-check request outside the workload's "
                              f"{policy.kind} policy: {text[:200]!r}")
    if needs_confidence and not (response.choices[0].logprobs and response.choices[0].logprobs.content):
        raise DistilleryError(f"model server at {url} answered the health-check request without its tokens' "
                              "log-probabilities: a cascade route needs them for its confidence threshold")


def _probe_classifier(url: str, model: str, messages: list[dict], policy: DecodingPolicy | None) -> None:
    """A real classify request as the gateway sends it (``gateway.small_model``): healthy only when the answer is one
    of the policy's labels with its probabilities."""
    base = wire.classify_base_url(url)
    status, text = _post_json(f"{base}/classify", wire.classify_request(model, classifier_text(messages)))
    if status != 200:
        raise DistilleryError(f"model server at {base} failed the health-check classify request to {model!r} "
                              f"(HTTP {status}): {text[:500]}")
    try:
        label, _ = wire.classification_of(json.loads(text))
    except ValueError as exc:  # not JSON, or not a classify answer (wire.WireError)
        raise DistilleryError(f"model server at {base} answered the health-check classify request with no label "
                              f"and probability: {exc}") from exc
    if not (policy or DecodingPolicy()).valid_answer(label):
        raise DistilleryError(f"model server at {base} answered the health-check classify request outside the "
                              f"workload's labels: {label!r}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of this process counts as gone
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        pass
    try:  # so does anyone else's zombie (in a container nobody may reap it)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _terminate(pid: int, timeout_s: float = 10) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)
