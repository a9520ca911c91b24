"""The gateway: the OpenAI-compatible endpoint applications call instead of their provider.

It authenticates callers with gateway keys, resolves each call's workload, forwards it to the provider or lets
the small model answer as the workload's route says (``cutover``), and records every exchange through the
capture stage's recorder. One module per wire protocol (``protocols``); the HTTP layer (``http``), the provider
side (``proxy``), keys, config, metrics, and the server that runs it all (``server``).
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "app": ["Gateway", "GatewayError", "WORKLOAD_HEADER"],
    "config": ["GatewayConfig", "Upstream", "load_config"],
    "server": ["BackgroundGateway", "build_gateway", "serve_forever"],
    "keys": ["KeyStore", "ApiKey"],
})
