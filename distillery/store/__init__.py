"""Store: where every stage's data lives.

The log store (captured exchanges, gateway keys, routes; SQLAlchemy, schema owned by the
Alembic migrations in ``migrations/``) and the artifact store (versioned folders, published
atomically, one per lifecycle step and workload).
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "logstore": ["LogStore", "Exchange", "exchange_values", "load_snapshot", "save_snapshot", "JSON_COLUMNS",
                 "STATUS_OK", "STATUS_ERROR", "SERVED_BY_FRONTIER", "SERVED_BY_SMALL", "SERVED_BY_SHADOW",
                 "SERVED_BY_AUDIT", "ExchangeRow", "ApiKeyRow", "RouteRow", "RouteEventRow"],
    "artifacts": ["ArtifactStore", "Artifact"],
})
