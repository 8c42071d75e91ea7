"""``joules batch``: score a file, resumably.

The job reads the input in chunks and, for each chunk, appends results and
errors, makes them durable (fsync) and only then records a checkpoint (written
to a temporary file and renamed, so it is whole or absent). After a SIGKILL at
any moment, the next run cuts the outputs back to the checkpoint and carries
on after the last checkpointed row: every input row ends up exactly once,
either as an output row or as an error row, in input order.

Each chunk goes through the path every mode shares (``Predictor.predict_rows``):
a row refused by admission, a row whose model output is not finite, and a row
that makes the model call fail (found by splitting the call,
``runtime/isolation.py``) each become an error row ``{"row", "id", "reason"}``
and the job goes on.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from joules.errors import DataError
from joules.meter import Cost, job_cost
from joules.runtime import Prediction, Predictor
from joules.serve.batch import checkpoint
from joules.serve.batch.config import BatchConfig
from joules.serve.batch.files import JobFiles
from joules.serve.batch.io import ResultWriter, Row, detect_format, read_rows, result_writer
from joules.serve.batch.items import MAX_ITEM_CHUNK, item_fingerprint, item_format, read_item_rows

FIRST_CHUNK, MIN_CHUNK, MAX_CHUNK = 256, 64, 8192


@dataclass
class BatchSummary:
    rows: int = 0  # input rows handled so far, over all runs of the job
    scored: int = 0
    errors: int = 0
    processed: int = 0  # rows scored by this run
    seconds: float = 0.0
    actions: Counter[str] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)
    energy_j: float = 0.0
    cpu_s: float = 0.0
    usd: float = 0.0
    co2_g: float = 0.0
    resumed_from: int = 0
    model: str = ""
    output: str = ""
    errors_file: str = ""
    cost: dict[str, Any] = field(default_factory=dict)  # joules.meter.job_cost: {"total", "per_1000", ...}

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "processed": self.processed,
            "errors": self.errors,
            "rows_per_s": round(self.processed / self.seconds, 1) if self.seconds > 0 else 0.0,
            "actions": dict(sorted(self.actions.items())),
            "labels": dict(sorted(self.labels.items())),
            "energy_j": round(self.energy_j, 3),
            "energy_j_per_1000": round(1000 * self.energy_j / self.scored, 3) if self.scored else 0.0,
            "scored": self.scored,
            "resumed_from": self.resumed_from,
            "seconds": round(self.seconds, 2),
            "model": self.model,
            "output": self.output,
            "errors_file": self.errors_file,
            "cost": self.cost,
        }


class BatchJob:
    def __init__(self, predictor: Predictor, config: BatchConfig) -> None:
        if not (config.input.is_file() or config.input.is_dir()):
            raise DataError(f"input file {str(config.input)!r} does not exist")
        self.predictor = predictor
        self.cfg = config
        # Files as rows (a folder of .eml or images, an mbox, a CSV of image paths: items.py), else a table.
        self.item_fmt = item_format(config.input, config.input_format, predictor.kind.name)
        self.in_fmt = self.item_fmt or detect_format(config.input, config.input_format)
        self.out_fmt = detect_format(config.output, config.output_format)
        self.files = JobFiles.of(config.output, self.out_fmt)
        self.files.refuse_input(config.input)  # before anything is opened: it would be truncated or replaced
        self.columns = [config.id_column, "label", "action", *(f"prob_{c}" for c in predictor.labels)]
        # The input columns the model's fields are read from (a text model's may be renamed).
        fields = predictor.fields
        if config.text_column is not None and len(fields) == 1:
            self.sources = {fields[0]: config.text_column}
        else:
            self.sources = {f: f for f in fields}

    # -- checkpoint ------------------------------------------------------------------------------

    def _load_checkpoint(self) -> dict[str, Any] | None:
        ckpt = checkpoint.load(self.files, overwrite=self.cfg.overwrite, fingerprint=self._fingerprint)
        if ckpt is not None and ckpt.get("model") != self.predictor.ref:
            raise DataError(
                f"the unfinished job at {str(self.cfg.output)!r} was scored with {ckpt.get('model')}, not "
                f"{self.predictor.ref}; resume with `joules batch {ckpt.get('model')} ...` or pass --overwrite"
            )
        return ckpt

    # -- run -------------------------------------------------------------------------------------

    def _writer(self, position: int) -> ResultWriter:
        return result_writer(self.out_fmt, self.files.partial, position, self.columns)

    def _fingerprint(self) -> dict[str, Any]:
        if self.item_fmt is not None:
            return item_fingerprint(self.cfg.input, self.item_fmt)
        return checkpoint.input_fingerprint(self.cfg.input)

    def _rows(self, skip: int) -> Iterator[Row]:
        if self.item_fmt is None:
            return read_rows(self.cfg.input, self.in_fmt, self.sources, self.cfg.id_column, skip=skip)
        (field_name,) = self.predictor.fields
        column = self.cfg.text_column or "path"  # a CSV of image paths: the column naming the files
        return read_item_rows(self.cfg.input, self.item_fmt, field_name, skip=skip, column=column)

    def _chunks(self, skip: int) -> Iterator[list[Row]]:
        """Chunks of rows; with automatic sizing, each is sized from the rate of the one before."""
        largest = MAX_ITEM_CHUNK if self.item_fmt is not None else MAX_CHUNK
        size = min(self.cfg.chunk_rows or FIRST_CHUNK, largest)
        chunk: list[Row] = []
        for row in self._rows(skip):
            chunk.append(row)
            if len(chunk) >= size:
                started = time.perf_counter()
                yield chunk
                if self.cfg.chunk_rows is None:
                    rate = len(chunk) / max(time.perf_counter() - started, 1e-6)
                    size = int(min(largest, max(min(MIN_CHUNK, largest), rate * self.cfg.checkpoint_seconds)))
                chunk = []
        if chunk:
            yield chunk

    def run(self) -> BatchSummary:
        with self.files.running():
            return self._run()

    def _run(self) -> BatchSummary:
        started = time.perf_counter()
        ckpt = self._load_checkpoint()
        s = BatchSummary(model=self.predictor.ref, output=str(self.cfg.output), errors_file=str(self.files.errors))
        state = checkpoint.initial_state(
            fingerprint=self._fingerprint(),
            model=self.predictor.ref,
            columns=self.columns,
            scored=0,
            actions={},
            labels={},
        )
        s.resumed_from, s.processed = checkpoint.run_to_end(
            self.files, state, ckpt, self._writer, self._judged(state), progress=self.cfg.progress
        )
        s.rows, s.scored, s.errors = state["rows_done"], state["scored"], state["errors"]
        s.actions, s.labels = Counter(state["actions"]), Counter(state["labels"])
        s.energy_j, s.cpu_s, s.usd, s.co2_g = state["energy_j"], state["cpu_s"], state["usd"], state["co2_g"]
        s.seconds = time.perf_counter() - started
        # The rows were priced by the Predictor (the one pricing function); the job is their sum.
        meter = self.predictor.meter
        total = Cost(energy_j=s.energy_j, usd=s.usd, co2_g=s.co2_g, cpu_s=s.cpu_s, method=meter.method, how=meter.how)
        s.cost = job_cost(total, s.scored)
        return s

    def _scored_chunks(self, skip: int) -> Iterator[tuple[list[Row], Sequence[Prediction | Exception]]]:
        """Each chunk of rows from the ``skip``-th on, in input order, with the results of its readable rows
        (``Predictor.predict_rows``, in the rows' order). Another engine (``serve/ray/batch.py``) scores
        elsewhere and keeps everything else: the files, the checkpoints, the rows written."""
        for chunk in self._chunks(skip):
            yield chunk, self.predictor.predict_rows([r.fields or {} for r in chunk if r.error is None])

    def _judged(self, state: dict[str, Any]) -> Iterator[tuple[list[Row], list[dict[str, Any]], list[dict[str, Any]]]]:
        """Each chunk after the last one done, with its output rows and error rows."""
        for chunk, results in self._scored_chunks(state["rows_done"]):
            yield chunk, *self._judge(chunk, results, state)

    def _judge(
        self, chunk: list[Row], results: Sequence[Prediction | Exception], state: dict[str, Any]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Output rows and error rows of a chunk; the tallies go into ``state``."""
        readable = [r for r in chunk if r.error is None]
        found: dict[int, Prediction | Exception] = {r.index: res for r, res in zip(readable, results, strict=True)}
        out_rows: list[dict[str, Any]] = []
        err_rows: list[dict[str, Any]] = []
        for r in chunk:
            res = found.get(r.index)
            if isinstance(res, Prediction):
                for k in ("energy_j", "cpu_s", "usd", "co2_g"):
                    state[k] += getattr(res.cost, k)
            reason = r.error or _reason(res)
            if reason is not None:
                err_rows.append({"row": r.index, **({"line": r.line} if r.line else {}), "id": r.id, "reason": reason})
                continue
            assert isinstance(res, Prediction) and res.probabilities is not None  # no reason: a scored row
            rec = {self.cfg.id_column: r.id, "label": res.label, "action": res.action}
            rec.update({f"prob_{c}": round(float(res.probabilities[c]), 6) for c in self.predictor.labels})
            out_rows.append(rec)
            state["labels"][res.label] = state["labels"].get(res.label, 0) + 1
            if res.action is not None:
                state["actions"][res.action] = state["actions"].get(res.action, 0) + 1
        state["scored"] += len(out_rows)
        state["errors"] += len(err_rows)
        return out_rows, err_rows


def _reason(result: Prediction | Exception | None) -> str | None:
    """Why a row has no output row: admission's or the model output's reason, or the model's failure."""
    if isinstance(result, Prediction):
        return result.error
    if result is None:
        return "not scored"
    return model_failure_reason(result)


def model_failure_reason(exc: BaseException) -> str:
    """The reason of a row whose model call failed (``runtime.isolate`` returned the exception)."""
    return f"the model failed on this row: {type(exc).__name__}: {exc}"


def run_batch(predictor: Predictor, config: BatchConfig) -> BatchSummary:
    return BatchJob(predictor, config).run()
