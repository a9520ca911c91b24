"""Curation: a workload's raw log rows to a clean, leak-free train/validation/test set.

Filters (failed, empty, truncated, refused, over-long, invalid answers), exact and
near-duplicate removal (MinHash, ``neardup``), PII scrubbing (``pii``), the split, the data
card, and the checks that decide whether training may use the result (``checks``).
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "dataset": ["curate", "data_card", "infer_task", "leaked_test_rows", "CurationReport", "LEAKAGE_THRESHOLD",
                "COPIED_SHARE"],
    "checks": ["CheckOutcome", "blocking_checks", "enough_rows", "no_pii_in_train", "no_test_leakage",
               "label_balance"],
    "pii": ["scrub", "find_pii"],
})
