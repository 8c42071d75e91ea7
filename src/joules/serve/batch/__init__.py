"""Batch inference over files: CSV, JSONL and Parquet, chunked and resumable."""

from joules.serve.batch.job import BatchConfig, BatchJob, BatchSummary, run_batch

__all__ = ["BatchConfig", "BatchJob", "BatchSummary", "run_batch"]
