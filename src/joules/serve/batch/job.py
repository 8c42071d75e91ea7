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

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from joules.errors import DataError
from joules.meter import Cost, job_cost
from joules.runtime import Prediction, Predictor
from joules.serve.batch.config import BatchConfig
from joules.serve.batch.files import JobFiles
from joules.serve.batch.io import CsvWriter, JsonlWriter, ParquetWriter, ResultWriter, Row, detect_format, read_rows
from joules.serve.batch.items import MAX_ITEM_CHUNK, item_fingerprint, item_format, read_item_rows

CHECKPOINT_VERSION = 1
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


def _fingerprint(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


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
        self.checkpoint_path = self.files.checkpoint
        self.partial = self.files.partial
        self.errors_final = self.files.errors
        self.errors_partial = self.files.errors_partial
        self.columns = [config.id_column, "label", "action", *(f"prob_{c}" for c in predictor.labels)]
        # The input columns the model's fields are read from (a text model's may be renamed).
        fields = predictor.fields
        if config.text_column is not None and len(fields) == 1:
            self.sources = {fields[0]: config.text_column}
        else:
            self.sources = {f: f for f in fields}

    # -- checkpoint ------------------------------------------------------------------------------

    def _load_checkpoint(self) -> dict[str, Any] | None:
        if self.cfg.overwrite:
            self._discard()
            return None
        if self.checkpoint_path.exists():
            try:
                ckpt: dict[str, Any] = json.loads(self.checkpoint_path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, OSError) as e:
                raise DataError(
                    f"checkpoint {str(self.checkpoint_path)!r} is unreadable ({e}); pass --overwrite to start over"
                ) from e
            if ckpt.get("input") != self._fingerprint():
                raise DataError(
                    f"{str(self.cfg.output)!r} has a checkpoint from a run over a different or changed input; "
                    "pass --overwrite to start over"
                )
            if ckpt.get("model") != self.predictor.ref:
                raise DataError(
                    f"the unfinished job at {str(self.cfg.output)!r} was scored with {ckpt.get('model')}, not "
                    f"{self.predictor.ref}; resume with `joules batch {ckpt.get('model')} ...` or pass --overwrite"
                )
            return ckpt
        if self.cfg.output.exists():
            raise DataError(f"output {str(self.cfg.output)!r} already exists; pass --overwrite to replace it")
        return None

    def _discard(self) -> None:
        import shutil

        for p in (self.checkpoint_path, self.errors_partial):
            p.unlink(missing_ok=True)
        if self.partial.is_dir():
            shutil.rmtree(self.partial)
        else:
            self.partial.unlink(missing_ok=True)

    def _save_checkpoint(self, state: dict[str, Any]) -> None:
        tmp = self.checkpoint_path.with_name(self.checkpoint_path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.checkpoint_path)

    # -- run -------------------------------------------------------------------------------------

    def _writer(self, position: int) -> ResultWriter:
        if self.out_fmt == "csv":
            return CsvWriter(self.partial, position, self.columns)
        if self.out_fmt == "jsonl":
            return JsonlWriter(self.partial, position)
        return ParquetWriter(self.partial, position, self.columns)

    def _fingerprint(self) -> dict[str, Any]:
        if self.item_fmt is not None:
            return item_fingerprint(self.cfg.input, self.item_fmt)
        return _fingerprint(self.cfg.input)

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
        self.cfg.output.parent.mkdir(parents=True, exist_ok=True)
        with self.files.lock():  # one run at a time per output
            try:
                return self._run()
            except BaseException:
                if not self.checkpoint_path.exists():
                    self.files.discard_partials()  # a failed start leaves nothing behind
                raise

    def _run(self) -> BatchSummary:
        started = time.perf_counter()
        ckpt = self._load_checkpoint()
        s = BatchSummary(model=self.predictor.ref, output=str(self.cfg.output), errors_file=str(self.errors_final))
        state: dict[str, Any] = {
            "version": CHECKPOINT_VERSION,
            "input": self._fingerprint(),
            "model": self.predictor.ref,
            "columns": self.columns,
            "rows_done": 0,
            "output_position": 0,
            "errors_position": 0,
            "scored": 0,
            "errors": 0,
            "actions": {},
            "labels": {},
            "energy_j": 0.0,
            "cpu_s": 0.0,
            "usd": 0.0,
            "co2_g": 0.0,
            "status": "running",
        }
        if ckpt is not None:
            state.update(ckpt)
            s.resumed_from = state["rows_done"]
            print(f"resuming {self.cfg.output} after row {state['rows_done']:,}", file=sys.stderr)
        if state["status"] == "running":
            self._score(state, s)
        self._finalize(state)
        s.rows, s.scored, s.errors = state["rows_done"], state["scored"], state["errors"]
        s.actions, s.labels = Counter(state["actions"]), Counter(state["labels"])
        s.energy_j, s.cpu_s, s.usd, s.co2_g = state["energy_j"], state["cpu_s"], state["usd"], state["co2_g"]
        s.seconds = time.perf_counter() - started
        # The rows were priced by the Predictor (the one pricing function); the job is their sum.
        meter = self.predictor.meter
        total = Cost(energy_j=s.energy_j, usd=s.usd, co2_g=s.co2_g, cpu_s=s.cpu_s, method=meter.method, how=meter.how)
        s.cost = job_cost(total, s.scored)
        return s

    def _score(self, state: dict[str, Any], s: BatchSummary) -> None:
        from tqdm import tqdm

        writer = self._writer(state["output_position"])
        errors = JsonlWriter(self.errors_partial, state["errors_position"])
        bar = tqdm(
            desc=f"batch {self.predictor.ref}",
            unit=" rows",
            initial=state["rows_done"],
            file=sys.stderr,
            disable=not self.cfg.progress,
            dynamic_ncols=True,
            mininterval=0.5,
        )
        try:
            for chunk, results in self._scored_chunks(state["rows_done"]):
                out_rows, err_rows = self._judge(chunk, results, state)
                writer.write(out_rows)
                errors.write(err_rows)
                s.processed += len(out_rows)
                state["output_position"] = writer.commit()
                state["errors_position"] = errors.commit()
                state["rows_done"] = chunk[-1].index + 1
                self._save_checkpoint(state)
                bar.update(len(chunk))
        finally:
            bar.close()
            writer.close()
            errors.close()
        state["status"] = "finalizing"
        self._save_checkpoint(state)

    def _scored_chunks(self, skip: int) -> Iterator[tuple[list[Row], Sequence[Prediction | Exception]]]:
        """Each chunk of rows from the ``skip``-th on, in input order, with the results of its readable rows
        (``Predictor.predict_rows``, in the rows' order). Another engine (``serve/ray/batch.py``) scores
        elsewhere and keeps everything else: the files, the checkpoints, the rows written."""
        for chunk in self._chunks(skip):
            yield chunk, self.predictor.predict_rows([r.fields or {} for r in chunk if r.error is None])

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

    def _finalize(self, state: dict[str, Any]) -> None:
        """Move finished outputs into place; idempotent, so a kill here is finished by the next run."""
        if self.partial.exists():
            self._writer(state["output_position"]).finish(self.cfg.output)
        if self.errors_partial.exists():
            JsonlWriter(self.errors_partial, state["errors_position"]).finish(self.errors_final)
        elif not self.errors_final.exists():
            self.errors_final.touch()
        self.checkpoint_path.unlink(missing_ok=True)


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
