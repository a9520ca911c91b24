"""Routing: which model answers a workload's calls, and how a route moves.

The routes and their store (``routes``: frontier, shadow, canary, small; every change a route event), the rollback
window that watches the small model's outcomes at the gateway (``rollback``), the autopilot that walks a route
through the rollout's stages by a sequential test and ``step_back``, the one rule every step back follows
(``autopilot``), and a gateway's routes in memory with their refresh (``table``). No torch here: the gateway and the
CLI import this stage without the model stack.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "routes": ["Route", "RouteStore", "RouteEvent", "RouteState", "Approval", "Evidence", "takes_small_model",
               "canary_bucket", "FRONTIER", "SHADOW", "CANARY", "SMALL", "MODES", "ROUTE_KEY_HEADER"],
    "rollback": ["RolloutMonitor", "RollbackPolicy"],
    "autopilot": ["AutopilotPolicy", "Decision", "Stage", "step_back", "ADVANCE", "STEP_BACK"],
    "table": ["RouteTable"],
})
