"""ONNX Runtime sessions: providers, threads, graph optimizations."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from joules.errors import BundleError
from joules.runtime.options import AUTO_PROVIDERS, RuntimeOptions

__all__ = ["GRAPH_LEVELS", "ORT_TYPES", "OnnxExecutor", "RuntimeOptions", "choose_providers", "session_options"]

GRAPH_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


def session_options(options: RuntimeOptions) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = GRAPH_LEVELS[options.graph_optimization]
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.enable_mem_pattern = options.mem_pattern
    so.enable_cpu_mem_arena = options.cpu_mem_arena
    so.log_severity_level = 3
    spin = "1" if options.allow_spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    if options.allow_spinning and options.spin_duration_us is not None:
        so.add_session_config_entry("session.intra_op.spin_duration_us", str(options.spin_duration_us))
        so.add_session_config_entry("session.inter_op.spin_duration_us", str(options.spin_duration_us))
    return so


def choose_providers(options: RuntimeOptions) -> list[str]:
    if options.providers is not None:
        return list(options.providers)
    available = set(ort.get_available_providers())
    return [p for p in AUTO_PROVIDERS if p in available] or ["CPUExecutionProvider"]


class OnnxExecutor:
    """One ONNX Runtime session. ``run`` is safe to call from several threads."""

    def __init__(self, model_path: Path, options: RuntimeOptions) -> None:
        self.model_path = model_path
        self.options = options
        try:
            self.session = ort.InferenceSession(
                str(model_path), session_options(options), providers=choose_providers(options)
            )
        # ONNX Runtime raises its own classes (Fail, InvalidGraph, NoSuchFile...) for a model it cannot
        # load: say which file and why, as joules' error, so that no caller shows a traceback for it.
        except Exception as e:
            raise BundleError(f"ONNX Runtime cannot load {str(model_path)!r}: {e}") from e
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def input_dtype(self, name: str) -> Any:
        return ORT_TYPES.get(self.inputs[name].type, np.float32)

    def run(self, feeds: Mapping[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        names = outputs or self.outputs
        values = self.session.run(names, dict(feeds))
        return dict(zip(names, values, strict=True))
