"""ONNX Runtime sessions: providers, threads, graph optimizations."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from joules.errors import BundleError, ConfigError

GRAPH_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
# Preference order when providers are chosen automatically.
AUTO_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True, kw_only=True)
class RuntimeOptions:
    """How a model runs. Defaults suit one process serving on a small CPU machine."""

    providers: tuple[str, ...] | None = None  # None: the best available (TensorRT, CUDA, then CPU)
    intra_op_threads: int = 0  # 0: ONNX Runtime's default, one per physical core
    inter_op_threads: int = 1
    # Spinning pool threads burn CPU waiting for work; on a 2-core machine ONNX Runtime's long
    # default spin starves the HTTP loop, so spinning is off unless asked for (the server asks
    # for a bounded spin: spin_duration_us).
    allow_spinning: bool = False
    # With spinning on: how long an idle pool thread spins before it sleeps (ONNX Runtime's
    # session.intra_op.spin_duration_us). None: ONNX Runtime's own default (long).
    spin_duration_us: int | None = None
    graph_optimization: str = "all"
    # Memory patterns and the CPU arena cache allocations per input shape; with many shapes
    # (dynamic batching of texts) the arena keeps growing, so servers may turn them off.
    mem_pattern: bool = True
    cpu_mem_arena: bool = True
    max_batch_size: int = 64  # rows per model call; larger inputs are split
    max_batch_tokens: int | None = None  # padded tokens per model call (rows x longest); None: no cap
    # Sort a batch's rows by token length and cut them into model calls that balance padding
    # against per-call overhead (planning.py). Off only to measure what it buys.
    group_by_length: bool = True
    warmup: bool = True

    def __post_init__(self) -> None:
        if self.graph_optimization not in GRAPH_LEVELS:
            raise ConfigError(f"graph_optimization {self.graph_optimization!r} is not one of {list(GRAPH_LEVELS)}")
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise ConfigError(
                f"thread counts must be >= 0, got intra={self.intra_op_threads} inter={self.inter_op_threads}"
            )
        if self.max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.spin_duration_us is not None and not 1 <= self.spin_duration_us <= 1_000_000:
            raise ConfigError(f"spin_duration_us must be in [1, 1000000] or None, got {self.spin_duration_us}")
        if self.max_batch_tokens is not None and self.max_batch_tokens < 1:
            raise ConfigError(f"max_batch_tokens must be >= 1 or None, got {self.max_batch_tokens}")
        if self.providers is not None:
            available = ort.get_available_providers()
            missing = [p for p in self.providers if p not in available]
            if missing:
                raise ConfigError(f"execution providers {missing} are not available here; available: {available}")


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
