"""How a model runs: ``RuntimeOptions``, light enough for the CLI to read its defaults.

ONNX Runtime itself is imported by ``executor.py`` when a session is made.
"""

from __future__ import annotations

from dataclasses import dataclass

from joules.errors import ConfigError
from joules.runtime.limits import MAX_CALL_ROWS, MAX_CALL_TOKENS, MAX_TEXT_BYTES

GRAPH_OPTIMIZATIONS = ("disable", "basic", "extended", "all")
# Preference order when providers are chosen automatically.
AUTO_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


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
    max_batch_size: int = MAX_CALL_ROWS  # rows per model call; larger inputs are split
    max_batch_tokens: int | None = MAX_CALL_TOKENS  # padded tokens per model call (rows x longest); None: no cap
    # Sort a batch's rows by token length and cut them into model calls that balance padding
    # against per-call overhead (planning.py). Off only to measure what it buys.
    group_by_length: bool = True
    warmup: bool = True
    # Admission's bound on one text (UTF-8 bytes); a longer text is refused, in every mode.
    max_text_bytes: int = MAX_TEXT_BYTES

    def __post_init__(self) -> None:
        if self.graph_optimization not in GRAPH_OPTIMIZATIONS:
            raise ConfigError(
                f"graph_optimization {self.graph_optimization!r} is not one of {list(GRAPH_OPTIMIZATIONS)}"
            )
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise ConfigError(
                f"thread counts must be >= 0, got intra={self.intra_op_threads} inter={self.inter_op_threads}"
            )
        if self.max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.spin_duration_us is not None and not 1 <= self.spin_duration_us <= 1_000_000:
            raise ConfigError(f"spin_duration_us must be in [1, 1000000] or None, got {self.spin_duration_us}")
        if not isinstance(self.max_text_bytes, int) or self.max_text_bytes < 1:
            raise ConfigError(f"max_text_bytes must be a whole number >= 1, got {self.max_text_bytes!r}")
        if self.max_batch_tokens is not None and self.max_batch_tokens < 1:
            raise ConfigError(f"max_batch_tokens must be >= 1 or None, got {self.max_batch_tokens}")
        if self.providers is not None:
            import onnxruntime as ort  # here, not at import: the CLI reads these defaults without loading ORT

            available = ort.get_available_providers()
            missing = [p for p in self.providers if p not in available]
            if missing:
                raise ConfigError(f"execution providers {missing} are not available here; available: {available}")
