"""What ``joules batch`` was asked to do: one frozen, validated configuration.

The CLI's flags take their defaults from these fields (and rows per model call,
the text size bound, from ``RuntimeOptions``, as every mode does); light to
import (no ONNX Runtime), so the parser can read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from joules.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class BatchConfig:
    input: Path
    output: Path
    text_column: str | None = None  # the column holding a text model's text field (None: the field's name)
    id_column: str = "id"
    input_format: str | None = None
    output_format: str | None = None
    # Rows per checkpoint; None sizes chunks to take about `checkpoint_seconds` each, so a slow
    # model still checkpoints often and a fast one is not slowed by fsyncs. The Predictor sorts
    # each chunk by work (tokens) before cutting it into model calls.
    chunk_rows: int | None = None
    checkpoint_seconds: float = 2.0
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.chunk_rows is not None and self.chunk_rows < 1:
            raise ConfigError(f"chunk_rows must be >= 1, got {self.chunk_rows}")
        if self.checkpoint_seconds <= 0:
            raise ConfigError(f"checkpoint_seconds must be > 0, got {self.checkpoint_seconds}")
        if self.text_column is not None and not self.text_column:
            raise ConfigError("text_column must not be empty")
        if self.input.resolve() == self.output.resolve():
            raise ConfigError(f"the output {str(self.output)!r} would overwrite the input; choose another path")
