"""The local model server: a base model with its students behind an OpenAI-compatible API.

For a generative base (a causal LM) it answers chat completions with the base model or any loaded LoRA adapter; for
an encoder base, with any loaded encoder student (a classifier or a span tagger, each a whole model: ``encoders``).
The request's ``model`` field chooses. Students load and unload at run time through vLLM's routes, so the deploy step
drives it and vLLM the same way. ``Endpoints`` starts it as ``python -m distillery.serving.model_server``; the kind of
its first student says which server it is.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

from distillery import wire
from distillery.serving.openai_http import Completion, OpenAIServer
from distillery.students import GENERATIVE, StudentCard, kind_of
from distillery.tasks import POLICY_FILE, DecodingPolicy

BASE_MODEL_NAME = "base"
DEFAULT_MAX_TOKENS = 64


def adapter_mismatch(adapter_dir: Path, base_model: str | None, module_names: set[str] | None = None,
                     max_rank: int | None = None) -> str | None:
    """Why a LoRA adapter cannot be served on ``base_model`` (None: it can; a None base model is not checked).

    Checked before any route may point at it: the base model it was trained on, its rank
    against the server's limit (vLLM's ``--max-lora-rank``), and that every module it adapts
    exists in the served model. An encoder student (a whole model with its card) is checked for its base only.
    """
    card = StudentCard.load(Path(adapter_dir))
    if card is not None:
        if base_model and os.path.realpath(card.base_model) != os.path.realpath(base_model) \
                and card.base_model != base_model:
            return f"the {card.kind} student was trained on {card.base_model!r}, the server serves {base_model!r}"
        return None
    try:
        config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return f"no readable adapter_config.json in {adapter_dir}: {exc}"
    trained_on = config.get("base_model_name_or_path")
    if base_model and trained_on and os.path.realpath(trained_on) != os.path.realpath(base_model) \
            and trained_on != base_model:
        return f"adapter was trained on {trained_on!r}, the server serves {base_model!r}"
    rank = int(config.get("r") or 0)
    if max_rank is not None and rank > max_rank:
        return f"adapter rank {rank} is above the server's maximum LoRA rank {max_rank}"
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    if module_names is not None:
        missing = sorted(t for t in targets if t not in module_names)
        if missing:
            return f"adapter targets modules the served model does not have: {missing}"
    return None


class ModelServer:
    """A base model with any number of LoRA adapters, answering through one ``BatchingEngine``.

    Adapters load and unload while it serves, through vLLM's routes (``/v1/load_lora_adapter``,
    ``/v1/unload_lora_adapter``), so the deploy step drives this server and vLLM the same way. Each
    adapter is answered under its decoding policy (``decoding_policy.json`` beside its weights, the
    one its evaluation used) unless a request names one in vLLM's ``structured_outputs`` or OpenAI's
    ``response_format``.
    """

    def __init__(self, base_model: str, adapters: dict[str, Path], *, max_batch: int = 32):
        from distillery.serving.engine import BatchingEngine, load_model

        self.base_model = base_model
        self.adapters = dict(adapters)
        self.policies = {name: DecodingPolicy.load(path) for name, path in self.adapters.items()}
        model, tokenizer = load_model(base_model, self.adapters)
        self.engine = BatchingEngine(model, tokenizer, max_batch=max_batch)
        self.module_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        self.default_model = next(iter(self.adapters), BASE_MODEL_NAME)

    def models(self) -> list[str]:
        return [*self.adapters, BASE_MODEL_NAME]

    def load_adapter(self, body: dict[str, Any]) -> dict[str, Any]:
        """Load an adapter beside the others; a failed load leaves the server as it was (400 with the reason)."""
        from peft import PeftModel

        name, path = body.get("lora_name"), body.get("lora_path")
        if not isinstance(name, str) or not name or not isinstance(path, str):
            raise wire.WireError("'lora_name' and 'lora_path' are required strings")
        if name in self.adapters or name == BASE_MODEL_NAME:
            raise wire.WireError(f"an adapter named {name!r} is already loaded")
        problem = adapter_mismatch(Path(path), self.base_model, self.module_names)
        if problem:
            raise wire.WireError(problem, 400, "adapter_mismatch")
        try:
            policy = DecodingPolicy.load(Path(path))
        except (ValueError, KeyError) as exc:
            raise wire.WireError(f"unreadable {POLICY_FILE} in {path}: {exc}", 400, "adapter_mismatch") from exc
        engine = self.engine
        with engine.exclusive():
            try:
                if isinstance(engine.model, PeftModel):
                    engine.model.load_adapter(path, adapter_name=name)
                else:
                    engine.model = PeftModel.from_pretrained(engine.model, path, adapter_name=name)
            except Exception as exc:  # noqa: BLE001 - unreadable or corrupt weights: refuse, keep serving
                if isinstance(engine.model, PeftModel) and name in engine.model.peft_config:
                    engine.model.delete_adapter(name)
                raise wire.WireError(f"adapter {path} did not load: {exc}", 400, "adapter_load_failed") from exc
            engine.model.eval()
            self.adapters[name], self.policies[name] = Path(path), policy
        return {"status": "ok", "loaded": name, "models": self.models()}

    def unload_adapter(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("lora_name")
        if name not in self.adapters:
            raise wire.WireError(f"no adapter {name!r} is loaded", 404, "model_not_found")
        with self.engine.exclusive():
            self.engine.model.delete_adapter(name)
            del self.adapters[name], self.policies[name]
        return {"status": "ok", "unloaded": name, "models": self.models()}

    def chat(self, body: dict[str, Any]) -> Completion:
        name, max_tokens = _checked_request(body, self.models(), self.default_model)
        adapter = None if name == BASE_MODEL_NAME else name
        result = self.engine.answer(body["messages"], adapter=adapter, policy=self._policy(body, adapter),
                                    max_new_tokens=max_tokens)
        logprobs = None
        if body.get("logprobs"):
            # As vLLM returns them under a grammar: normalized over the tokens the decoding policy allowed.
            tokens = [self.engine.tokenizer.decode([token]) for token in result.token_ids]
            logprobs = [wire.token_logprob(token, logprob) for token, logprob in zip(tokens, result.token_logprobs)]
        return Completion(result.text, name, result.prompt_tokens, result.completion_tokens, result.finish_reason,
                          logprobs=logprobs)

    def _policy(self, body: dict[str, Any], adapter: str | None) -> DecodingPolicy:
        """The request's own constraint (vLLM's ``structured_outputs``: a label choice, a JSON schema or an llguidance
        Lark grammar, as the gateway sends a grounded route's; OpenAI's ``response_format``), else the adapter's
        recorded policy (a grounded one grounds each request in its own user text), else free text."""
        try:
            if body.get("structured_outputs") is not None:
                policy = DecodingPolicy.from_structured_outputs(body["structured_outputs"])
                if policy.grammar:
                    from distillery.serving.engine import check_grammar

                    check_grammar(self.engine.tokenizer, policy.grammar)
                return policy
            response_format = body.get("response_format") or {}
            if response_format.get("type") == "json_schema":
                return DecodingPolicy.from_structured_outputs({"json": response_format["json_schema"]["schema"]})
            if response_format.get("type") == "json_object":
                return DecodingPolicy(json_object=True)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise wire.WireError(f"unsupported decoding constraint: {exc}") from exc  # 400; the server serves on
        return (self.policies.get(adapter) if adapter else None) or DecodingPolicy()


class EncoderModelServer:
    """Encoder students of one base encoder, each loaded whole, answering through one ``BatchingEngine``: the requests
    that arrive together for a student are answered in one forward pass. A classifier answers its label, a span tagger
    its JSON object; with ``logprobs: true`` each answer's "tokens" (the label; each word's tag) come with their
    log-probabilities, what the gateway's cascade reads. A request's decoding constraint is not needed: a classifier
    answers one of its labels and a span tagger copies the user's words by construction (the gateway still checks
    each answer against its route's policy)."""

    def __init__(self, base_model: str, students: dict[str, Path], *, max_batch: int = 64):
        from distillery.serving.encoders import EncoderStudent
        from distillery.serving.engine import BatchingEngine

        self.base_model = base_model
        self.students = {name: EncoderStudent.load(path) for name, path in students.items()}
        self.engine = BatchingEngine(None, None, max_batch=max_batch, answer_batch=self._answer)
        self.default_model = next(iter(self.students), "")

    def models(self) -> list[str]:
        return list(self.students)

    def _answer(self, name: str | None, conversations: list[list[dict]], _policies, _max_new_tokens) -> list:
        return self.students[name].answer(conversations, batch_size=len(conversations))

    def load_adapter(self, body: dict[str, Any]) -> dict[str, Any]:
        """Load a student beside the others; a failed load leaves the server as it was (400 with the reason)."""
        from distillery.serving.encoders import EncoderStudent

        name, path = body.get("lora_name"), body.get("lora_path")
        if not isinstance(name, str) or not name or not isinstance(path, str):
            raise wire.WireError("'lora_name' and 'lora_path' are required strings")
        if name in self.students:
            raise wire.WireError(f"a student named {name!r} is already loaded")
        if kind_of(Path(path)) == GENERATIVE:
            raise wire.WireError(f"{path} is a LoRA adapter, not an encoder student: this server serves encoder "
                                 f"students of {self.base_model}", 400, "adapter_mismatch")
        problem = adapter_mismatch(Path(path), self.base_model)
        if problem:
            raise wire.WireError(problem, 400, "adapter_mismatch")
        try:
            student = EncoderStudent.load(Path(path))
        except Exception as exc:  # noqa: BLE001 - unreadable or corrupt weights: refuse, keep serving
            raise wire.WireError(f"student {path} did not load: {exc}", 400, "adapter_load_failed") from exc
        with self.engine.exclusive():
            self.students[name] = student
        return {"status": "ok", "loaded": name, "models": self.models()}

    def unload_adapter(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("lora_name")
        if name not in self.students:
            raise wire.WireError(f"no student {name!r} is loaded", 404, "model_not_found")
        with self.engine.exclusive():
            del self.students[name]
        return {"status": "ok", "unloaded": name, "models": self.models()}

    def chat(self, body: dict[str, Any]) -> Completion:
        name, _ = _checked_request(body, self.models(), self.default_model)
        result = self.engine.answer(body["messages"], adapter=name)
        logprobs = None
        if body.get("logprobs"):
            tags = self.students[name].card.labels or self.students[name].card.tags
            logprobs = [wire.token_logprob(tags[token], logprob)
                        for token, logprob in zip(result.token_ids, result.token_logprobs)]
        return Completion(result.text, name, result.prompt_tokens, result.completion_tokens, result.finish_reason,
                          logprobs=logprobs)


def _checked_request(body: dict[str, Any], models: list[str], default_model: str) -> tuple[str, int]:
    """The model a chat request asks for and its token limit; WireError (404, 400) when the server cannot answer it."""
    name = body.get("model") or default_model
    if name not in models:
        raise wire.WireError(f"model {name!r} is not served here; available: {models}", 404, "model_not_found")
    max_tokens = wire.max_tokens(body, DEFAULT_MAX_TOKENS)
    if not isinstance(max_tokens, int) or not 1 <= max_tokens <= 4096:
        raise wire.WireError("'max_tokens' must be an integer between 1 and 4096")
    if body.get("logprobs") not in (None, True, False) or body.get("top_logprobs") not in (None, 0):
        raise wire.WireError("'logprobs' must be true or false; 'top_logprobs' is not supported (only 0)")
    return name, max_tokens


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a base model with LoRA adapters over the OpenAI API.")
    parser.add_argument("--base-model", required=True)
    parser.add_argument("--adapter", action="append", default=[], help="NAME=PATH, repeatable")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--ready-file", help="written with the bound port once the model is loaded")
    parser.add_argument("--max-batch", type=int, default=32, help="requests answered together at most")
    args = parser.parse_args(argv)
    adapters = {name: Path(path) for name, path in (spec.split("=", 1) for spec in args.adapter)}
    encoder = any(kind_of(path) != GENERATIVE for path in adapters.values())
    model_server = (EncoderModelServer if encoder else ModelServer)(args.base_model, adapters, max_batch=args.max_batch)
    http = OpenAIServer((args.host, args.port), model_server.chat, model_server.models,
                        {"/v1/load_lora_adapter": model_server.load_adapter,
                         "/v1/unload_lora_adapter": model_server.unload_adapter})
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=http.shutdown).start())
    port = http.server_address[1]
    if args.ready_file:
        tmp = Path(args.ready_file + ".tmp")
        tmp.write_text(json.dumps({"port": port, "pid": os.getpid()}))
        os.replace(tmp, args.ready_file)
    print(f"serving {model_server.models()} on http://{args.host}:{port}/v1", flush=True)
    http.serve_forever()


if __name__ == "__main__":
    main()
