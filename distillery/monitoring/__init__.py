"""Monitoring: the deployed model on live traffic.

Shadow agreement, invalid answers, prompt drift (PSI of length and of embedding clusters)
and label shift against the training data, hallucination (answers not grounded in the prompt,
fields or labels the frontier would not give), money saved, and whether to retrain.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "live": ["live_report", "LiveReport", "MonitoringPolicy", "psi", "length_psi", "cluster_psi", "label_shift"],
    "hallucination": ["Hallucination", "invented_fields", "extraction_figures", "free_text_figures",
                      "classification_figures"],
})
