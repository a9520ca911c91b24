"""Capture: the frontier's real traffic into the log store.

The OpenAI-compatible gateway (``gateway/``: HTTP layer, auth with hashed keys, proxying,
routing between the frontier and the small model), the recorder that writes exchanges off the
request path, the client wrapper for code that cannot change its base URL, and the import and
export of log files.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "client": ["capture"],
    "recorder": ["Recorder"],
    "logs_io": ["import_logs", "export_finetune_jsonl", "ImportResult"],
    "gateway.config": ["GatewayConfig", "load_config"],
    "gateway.server": ["BackgroundGateway", "serve_forever"],
    "gateway.keys": ["KeyStore"],
    "gateway.app": ["WORKLOAD_HEADER"],
})
