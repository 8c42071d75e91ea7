"""Execution: admission, ONNX Runtime sessions, the Predictor and its result rows.

Names are imported when first used (PEP 562), so that reading a configuration's
defaults (``joules.runtime.options``, ``joules.runtime.batching``) does not load
ONNX Runtime or a tokenizer: the CLI builds its parser from those defaults.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_NAMES = {
    "MAX_TEXT_BYTES": "joules.runtime.limits",
    "OUTPUT_NOT_FINITE": "joules.runtime.results",
    "InputKind": "joules.runtime.admission",
    "OnnxExecutor": "joules.runtime.executor",
    "Prediction": "joules.runtime.results",
    "PredictionBatch": "joules.runtime.predictor",
    "Predictor": "joules.runtime.predictor",
    "RuntimeOptions": "joules.runtime.options",
    "TensorKind": "joules.runtime.admission",
    "TextKind": "joules.runtime.admission",
    "isolate": "joules.runtime.isolation",
    "load_predictor": "joules.runtime.loader",
    "total_cost": "joules.runtime.results",
}
__all__ = [
    "MAX_TEXT_BYTES",
    "OUTPUT_NOT_FINITE",
    "InputKind",
    "OnnxExecutor",
    "Prediction",
    "PredictionBatch",
    "Predictor",
    "RuntimeOptions",
    "TensorKind",
    "TextKind",
    "isolate",
    "load_predictor",
    "total_cost",
]

if TYPE_CHECKING:
    from joules.runtime.admission import InputKind, TensorKind, TextKind
    from joules.runtime.executor import OnnxExecutor
    from joules.runtime.isolation import isolate
    from joules.runtime.limits import MAX_TEXT_BYTES
    from joules.runtime.loader import load_predictor
    from joules.runtime.options import RuntimeOptions
    from joules.runtime.predictor import PredictionBatch, Predictor
    from joules.runtime.results import OUTPUT_NOT_FINITE, Prediction, total_cost


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'joules.runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
