"""``joules batch --engine ray``: the local batch job, its rows scored by a Ray Data actor pool.

What stays the local job's (``serve/batch/job.py``): reading the input with
joules' readers (so a malformed CSV line or JSON line is the same error row,
where Ray Data's Arrow readers would stop the whole dataset), the output
columns, the error rows and reasons, the checkpoint files and the summary.
What Ray does: the model calls. The rows of a segment (``segment_rows`` at a
time, so the driver never holds the whole input) become a Ray Dataset of
blocks of ``block_rows`` rows; ``map_batches`` sends each block to an actor
of an ``ActorPoolStrategy`` pool, each actor holding one Predictor loaded once
(``Predictor.predict_rows``: the one prediction path), and the driver takes
the results back in input order (``preserve_order``).

Crash safety, the same files as the local engine:
- a Ray worker killed mid-job (SIGKILL): Ray Data's actor pools restart a dead
  actor (``max_restarts=-1``) and run its block again (``max_task_retries=-1``,
  both Ray Data's defaults for actor pools, relied on and tested here); only the
  driver writes, one block's results once, in order, so no row is doubled;
- a killed driver: every block's rows are appended, fsynced and checkpointed by
  the driver before the next, as in a local run, so a re-run cuts the outputs
  back to the last checkpoint and goes on from the row after it.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from joules.errors import ConfigError
from joules.meter import Cost
from joules.runtime import Prediction, Predictor
from joules.runtime.options import RuntimeOptions
from joules.serve.batch.config import BatchConfig
from joules.serve.batch.io import Row, read_rows
from joules.serve.batch.job import BatchJob, BatchSummary, model_failure_reason
from joules.serve.ray.cluster import RayPlace, cluster_cpus, ray_session

# Rows per block (one actor call, one checkpoint) unless --chunk-rows says otherwise: a block is also what
# a killed actor's replacement scores again, so it stays small.
DEFAULT_BLOCK_ROWS = 256
# Rows the driver reads ahead into one Ray Dataset; the actor pool is started once per segment.
DEFAULT_SEGMENT_ROWS = 50_000


@dataclass(frozen=True, kw_only=True)
class RayBatchOptions:
    """``actors`` None: one fewer than the cluster's CPUs (at least one), so one CPU stays free for the driver
    and Ray Data's own tasks; ``threads_per_actor`` None: the cluster's CPUs shared among the actors."""

    place: RayPlace = field(default_factory=RayPlace)
    actors: int | None = None
    threads_per_actor: int | None = None
    segment_rows: int = DEFAULT_SEGMENT_ROWS

    def __post_init__(self) -> None:
        if self.actors is not None and self.actors < 1:
            raise ConfigError(f"--actors must be >= 1, got {self.actors}")
        if self.threads_per_actor is not None and self.threads_per_actor < 1:
            raise ConfigError(f"threads per actor must be >= 1, got {self.threads_per_actor}")
        if self.segment_rows < 1:
            raise ConfigError(f"segment_rows must be >= 1, got {self.segment_rows}")


def pool_size(cpus: int, actors: int | None) -> tuple[int, int]:
    """(actors, ONNX Runtime threads per actor) for a cluster of ``cpus`` CPUs.

    Each actor asks Ray for one CPU; with ``cpus - 1`` actors, one CPU is left for the tasks that feed and
    drain the pool, so the pool never waits on its own input (2 cores: 1 actor with 2 threads).
    """
    n = actors if actors is not None else max(1, cpus - 1)
    return n, max(1, cpus // n)


class Scorer:
    """One Ray Data actor: a Predictor loaded once, scoring blocks of rows.

    Rows and results travel between the driver and the actors as JSON text in Arrow string columns
    (``encode_fields``/``decode_result``), never pickled by joules: a row's raw field values (bytes as
    base64), and each result as a ``Prediction``'s fields; a row that failed the model call
    (``runtime/isolation.py``) travels as a failed ``Prediction`` with the reason the local engine gives it.
    """

    def __init__(self, ref: str, rules_file: str | None, options: RuntimeOptions) -> None:
        from joules.runtime import load_predictor

        self.predictor = load_predictor(ref, rules_file=rules_file, options=options)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        rows = [decode_fields(str(t)) for t in batch["fields"]]
        results = self.predictor.predict_rows(rows)
        out = np.array([encode_result(r) for r in results], dtype=object)
        return {"index": batch["index"], "result": out}


class RayBatchJob(BatchJob):
    """A ``BatchJob`` whose rows are scored by a Ray Data actor pool (``ray`` is the connected module)."""

    def __init__(
        self,
        predictor: Predictor,
        config: BatchConfig,
        *,
        ray: Any,
        options: RayBatchOptions,
        rules_file: str | None,
    ) -> None:
        super().__init__(predictor, config)
        self.ray = ray
        self.opts = options
        self.rules_file = rules_file
        self.block_rows = config.chunk_rows or DEFAULT_BLOCK_ROWS
        self.actors, threads = pool_size(cluster_cpus(ray), options.actors)
        threads = options.threads_per_actor or threads
        # The actors' options are the driver's, with the ONNX Runtime threads of one actor.
        self.actor_options = _with_threads(predictor.options, threads)

    def _segments(self, skip: int) -> Iterator[list[Row]]:
        segment: list[Row] = []
        for row in read_rows(self.cfg.input, self.in_fmt, self.sources, self.cfg.id_column, skip=skip):
            segment.append(row)
            if len(segment) >= self.opts.segment_rows:
                yield segment
                segment = []
        if segment:
            yield segment

    def _scored_chunks(self, skip: int) -> Iterator[tuple[list[Row], Sequence[Prediction | Exception]]]:
        for segment in self._segments(skip):
            yield from self._score_segment(segment)

    def _score_segment(self, segment: list[Row]) -> Iterator[tuple[list[Row], Sequence[Prediction | Exception]]]:
        import ray.data

        readable = [r for r in segment if r.error is None]
        pos = 0
        if readable:
            items = [{"index": r.index, "fields": encode_fields(r.fields or {})} for r in readable]
            context = ray.data.DataContext.get_current()
            context.execution_options.preserve_order = True
            context.enable_progress_bars = False  # the job has its own progress bar (--no-progress)
            blocks = ray.data.from_items(items, override_num_blocks=math.ceil(len(items) / self.block_rows))
            ds = blocks.map_batches(
                Scorer,
                fn_constructor_kwargs={
                    "ref": self.predictor.ref,  # NAME:VERSION: a promotion during the job does not change it
                    "rules_file": self.rules_file,
                    "options": self.actor_options,
                },
                batch_size=self.block_rows,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=self.actors),
                num_cpus=1,
            )
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
                indices = [int(i) for i in batch["index"]]
                if not indices:
                    continue
                end = pos
                while end < len(segment) and segment[end].index <= indices[-1]:
                    end += 1
                chunk = segment[pos:end]
                expected = [r.index for r in chunk if r.error is None]
                if expected != indices:  # preserve_order is what makes the driver's writes exactly once
                    raise RuntimeError(
                        f"Ray returned rows {indices[:3]}... where rows {expected[:3]}... were due; "
                        "the job stops here and a re-run resumes from its last checkpoint"
                    )
                yield chunk, [decode_result(str(t)) for t in batch["result"]]
                pos = end
        if pos < len(segment):  # rows after the last readable one: all unreadable
            yield segment[pos:], []


_BYTES = "$bytes"  # {"$bytes": base64}: a binary field value (an e-mail or an image file) in JSON


def _tag_bytes(value: object) -> object:
    if isinstance(value, bytes | bytearray | memoryview):
        return {_BYTES: base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"a batch field of type {type(value).__name__} cannot be sent to a Ray worker")


def _untag_bytes(obj: dict[str, Any]) -> Any:
    return base64.b64decode(obj[_BYTES]) if obj.keys() == {_BYTES} else obj


def encode_fields(fields: dict[str, Any]) -> str:
    """A row's raw field values as JSON text: strings (lone surrogates of undecodable input kept, as
    ``\\udcxx`` escapes), numbers (NaN kept: admission refuses it with its reason), bytes tagged."""
    return json.dumps(fields, default=_tag_bytes)


def decode_fields(text: str) -> dict[str, Any]:
    fields: dict[str, Any] = json.loads(text, object_hook=_untag_bytes)
    return fields


def encode_result(result: Prediction | Exception) -> str:
    """One result as JSON text; a model failure becomes the failed row the local engine would write."""
    p = result if isinstance(result, Prediction) else Prediction.failed(model_failure_reason(result))
    return json.dumps(
        {
            "label": p.label,
            "probabilities": None if p.probabilities is None else dict(p.probabilities),
            "action": p.action,
            "error": p.error,
            "cost": {k: getattr(p.cost, k) for k in Cost.__dataclass_fields__},
        }
    )


def decode_result(text: str) -> Prediction:
    d = json.loads(text)
    return Prediction(
        label=d["label"], probabilities=d["probabilities"], action=d["action"], error=d["error"], cost=Cost(**d["cost"])
    )


def _with_threads(options: RuntimeOptions, threads: int) -> RuntimeOptions:
    import dataclasses

    if options.intra_op_threads:  # --threads given: each actor uses that many
        return options
    return dataclasses.replace(options, intra_op_threads=threads)


def run_ray_batch(
    predictor: Predictor, config: BatchConfig, options: RayBatchOptions, *, rules_file: Path | None = None
) -> BatchSummary:
    """Run ``config`` on Ray (joined at ``options.place.address``, or started here and stopped at the end)."""
    home = str(predictor_home())  # absolute: a Ray worker's working directory is not the command's
    with ray_session(options.place, home=home) as ray:
        job = RayBatchJob(
            predictor, config, ray=ray, options=options, rules_file=str(rules_file) if rules_file else None
        )
        return job.run()


def predictor_home() -> Path:
    from joules.settings import load_settings

    return Path(load_settings().home).resolve()
