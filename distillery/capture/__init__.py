"""Capture: the frontier's real traffic into the log store.

The recorder that writes exchanges off the request path through a local journal (the gateway records with it),
the client wrapper for code that cannot change its base URL, and the import and export of log files.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "client": ["capture"],
    "recorder": ["Recorder", "lock_journal"],
    "logs_io": ["import_logs", "export_finetune_jsonl", "ImportResult"],
})
