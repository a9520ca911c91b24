"""Serving: the small model answering traffic.

The inference engine (``engine``: batched greedy decoding under the workload's decoding policy,
and the micro-batching that serves concurrent requests with it), the local model server
(``model_server``) and the endpoints that run it, run vLLM, or load adapters into a remote vLLM
(``endpoints``), the small HTTP base of the model server (``openai_http``), and the adapter as a loadable MLflow
model (``mlflow_model``). Encoder students (classifiers, span taggers) answer in one forward pass (``encoders``), and
every kind of student answers evaluation the same way (``students``). Which model answers a call is routing's (``distillery.routing``).
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "engine": ["load_model", "generate", "using_adapter", "Generation", "AnswerTrie", "BatchingEngine", "LoadResult",
               "serve_under_load"],
    "model_server": ["ModelServer", "EncoderModelServer", "BASE_MODEL_NAME", "adapter_mismatch"],
    "encoders": ["EncoderStudent"],
    "students": ["GenerativeStudent", "EncoderAnswerer", "Student", "load_students"],
    "endpoints": ["Endpoints", "Endpoint", "LOCAL", "VLLM", "REMOTE"],
    "openai_http": ["OpenAIServer", "Completion"],
    "mlflow_model": ["AdapterModel", "save_adapter_model"],
})
