"""Batch inference over files: CSV, JSONL and Parquet, chunked and resumable.

Names are imported when first used, so the CLI can read ``BatchConfig``'s
defaults without loading the runtime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_NAMES = {
    "BatchConfig": "joules.serve.batch.config",
    "BatchJob": "joules.serve.batch.job",
    "BatchSummary": "joules.serve.batch.job",
    "run_batch": "joules.serve.batch.job",
}
__all__ = [
    "BatchConfig",
    "BatchJob",
    "BatchSummary",
    "run_batch",
]

if TYPE_CHECKING:
    from joules.serve.batch.config import BatchConfig
    from joules.serve.batch.job import BatchJob, BatchSummary, run_batch


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'joules.serve.batch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
