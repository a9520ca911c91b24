"""Training: LoRA fine-tuning on a curated dataset, and its record in MLflow.

``trainer`` trains (loss on answer tokens only, resumable checkpoints); ``tracking`` records
runs, registers adapter versions and moves the registry aliases ``challenger``/``champion``.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "trainer": ["TrainingConfig", "TrainingResult", "StepCallback", "train_lora"],
    "tracking": ["Tracker", "CHAMPION", "CHALLENGER", "MODEL_ARTIFACT_PATH", "registered_model_name"],
})
