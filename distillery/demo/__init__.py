"""The demo, kept apart from the product: a built-in workload, a frontier stand-in, and the walk through it.

Only the CLI's demo commands and the tests import this package.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "workload": ["WORKLOAD", "QUEUES", "SYSTEM_PROMPT", "generate_tickets", "demo_messages", "EXTRACTION_WORKLOAD",
                 "EXTRACTION_PROMPT", "extraction_messages", "REPLY_WORKLOAD", "REPLY_PROMPT", "reply_messages",
                 "TOOL_WORKLOAD", "TOOL_PROMPT", "ROUTER_TOOLS", "tool_messages"],
    "standin": ["STANDIN_MODEL", "STANDIN_PRICES", "route_ticket", "standin_answer", "start_frontier_standin"],
    "walkthrough": ["send_demo_traffic", "walk_cutover"],
})
