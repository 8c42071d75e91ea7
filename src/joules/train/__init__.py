"""Training, export and fine-tuning with PyTorch (the ``train`` extra).

Nothing in the serving core imports this package.
"""

from joules.train.build import write_text_bundle
from joules.train.export import export_onnx, export_tensor_model
from joules.train.finetune import FineTuneConfig, fine_tune
from joules.train.hf import load_sequence_classifier, quiet_transformers

__all__ = [
    "FineTuneConfig",
    "export_onnx",
    "export_tensor_model",
    "fine_tune",
    "load_sequence_classifier",
    "quiet_transformers",
    "write_text_bundle",
]
