"""Execution: ONNX Runtime sessions and the Predictor."""

from joules.runtime.executor import OnnxExecutor, RuntimeOptions
from joules.runtime.loader import load_predictor
from joules.runtime.predictor import PredictionBatch, Predictor

__all__ = ["OnnxExecutor", "PredictionBatch", "Predictor", "RuntimeOptions", "load_predictor"]
