"""Serving: the small model answering traffic.

The inference engine (``engine``: batched greedy decoding, constrained to a label set when
the workload has one), the local model server (``model_server``) and the processes that run
it or vLLM (``endpoints``), and the gateway's routes between the frontier and the small model
with their automatic rollback (``routing``).
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "engine": ["load_model", "generate", "using_adapter", "Generation", "AnswerTrie"],
    "model_server": ["ModelServer", "BASE_MODEL_NAME", "adapter_mismatch"],
    "endpoints": ["LocalEndpoints", "Endpoint", "LOCAL", "VLLM"],
    "routing": ["Route", "RouteStore", "RouteEvent", "RolloutMonitor", "RollbackPolicy", "takes_small_model",
                "FRONTIER", "SHADOW", "CANARY", "SMALL", "ROUTE_KEY_HEADER"],
    "openai_http": ["OpenAIServer", "Completion", "RequestError"],
})
