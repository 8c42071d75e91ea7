"""``joules batch``: score a file, resumably.

The job reads the input in chunks and, for each chunk, appends results and
errors, makes them durable (fsync) and only then records a checkpoint (written
to a temporary file and renamed, so it is whole or absent). After a SIGKILL at
any moment, the next run cuts the outputs back to the checkpoint and carries
on after the last checkpointed row: every input row ends up exactly once,
either as an output row or as an error row, in input order.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from joules.errors import ConfigError, DataError
from joules.runtime import Predictor
from joules.serve.batch.files import JobFiles
from joules.serve.batch.io import CsvWriter, JsonlWriter, ParquetWriter, ResultWriter, Row, detect_format, read_rows

CHECKPOINT_VERSION = 1
FIRST_CHUNK, MIN_CHUNK, MAX_CHUNK = 256, 64, 8192


@dataclass(frozen=True, kw_only=True)
class BatchConfig:
    input: Path
    output: Path
    text_column: str = "text"
    id_column: str = "id"
    input_format: str | None = None
    output_format: str | None = None
    # Rows per checkpoint; None sizes chunks to take about `checkpoint_seconds` each, so a slow
    # model still checkpoints often and a fast one is not slowed by fsyncs. The Predictor sorts
    # each chunk by token length before cutting it into model calls.
    chunk_rows: int | None = None
    checkpoint_seconds: float = 2.0
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.chunk_rows is not None and self.chunk_rows < 1:
            raise ConfigError(f"chunk_rows must be >= 1, got {self.chunk_rows}")
        if self.checkpoint_seconds <= 0:
            raise ConfigError(f"checkpoint_seconds must be > 0, got {self.checkpoint_seconds}")
        if self.input.resolve() == self.output.resolve():
            raise ConfigError(f"the output {str(self.output)!r} would overwrite the input; choose another path")


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
    resumed_from: int = 0
    model: str = ""
    output: str = ""
    errors_file: str = ""
    cost: dict[str, Any] = field(default_factory=dict)  # joules.meter.job_cost: totals and per-1,000 figures

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
        if not predictor.is_text:
            raise ConfigError(f"joules batch scores text models; {predictor.ref} takes tensors")
        if not config.input.is_file():
            raise DataError(f"input file {str(config.input)!r} does not exist")
        self.predictor = predictor
        self.cfg = config
        self.in_fmt = detect_format(config.input, config.input_format)
        self.out_fmt = detect_format(config.output, config.output_format)
        self.files = JobFiles.of(config.output, self.out_fmt)
        self.files.refuse_input(config.input)  # before anything is opened: it would be truncated or replaced
        self.checkpoint_path = self.files.checkpoint
        self.partial = self.files.partial
        self.errors_final = self.files.errors
        self.errors_partial = self.files.errors_partial
        self.columns = [config.id_column, "label", "action", *(f"prob_{c}" for c in predictor.labels)]

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
            if ckpt.get("input") != _fingerprint(self.cfg.input):
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

    def _chunks(self, skip: int) -> Iterator[list[Row]]:
        """Chunks of rows; with automatic sizing, each is sized from the rate of the one before."""
        size = self.cfg.chunk_rows or FIRST_CHUNK
        chunk: list[Row] = []
        for row in read_rows(self.cfg.input, self.in_fmt, self.cfg.text_column, self.cfg.id_column, skip=skip):
            chunk.append(row)
            if len(chunk) >= size:
                started = time.perf_counter()
                yield chunk
                if self.cfg.chunk_rows is None:
                    rate = len(chunk) / max(time.perf_counter() - started, 1e-6)
                    size = int(min(MAX_CHUNK, max(MIN_CHUNK, rate * self.cfg.checkpoint_seconds)))
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
            "input": _fingerprint(self.cfg.input),
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
        s.energy_j, s.cpu_s = state["energy_j"], state["cpu_s"]
        s.seconds = time.perf_counter() - started
        s.cost = _job_cost(self.predictor, s)
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
            for chunk in self._chunks(state["rows_done"]):
                good = [r for r in chunk if r.error is None]
                bad = [r for r in chunk if r.error is not None]
                if good:
                    result = self.predictor.predict_texts([r.text for r in good])  # type: ignore[misc]
                    probs = result.probabilities.tolist()
                    out_rows = []
                    for r, label, action, p in zip(good, result.labels, result.actions, probs, strict=True):
                        rec = {self.cfg.id_column: r.id, "label": label, "action": action}
                        rec.update(
                            {f"prob_{c}": round(float(v), 6) for c, v in zip(self.predictor.labels, p, strict=True)}
                        )
                        out_rows.append(rec)
                    writer.write(out_rows)
                    for label in result.labels:
                        state["labels"][label] = state["labels"].get(label, 0) + 1
                    for action in result.actions:
                        if action is not None:
                            state["actions"][action] = state["actions"].get(action, 0) + 1
                    state["energy_j"] += result.measurement.energy_j
                    state["cpu_s"] += result.measurement.cpu_s
                    state["scored"] += len(good)
                    s.processed += len(good)
                if bad:
                    errors.write(
                        [
                            {"row": r.index, **({"line": r.line} if r.line else {}), "id": r.id, "reason": r.error}
                            for r in bad
                        ]
                    )
                    state["errors"] += len(bad)
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

    def _finalize(self, state: dict[str, Any]) -> None:
        """Move finished outputs into place; idempotent, so a kill here is finished by the next run."""
        if self.partial.exists():
            self._writer(state["output_position"]).finish(self.cfg.output)
        if self.errors_partial.exists():
            JsonlWriter(self.errors_partial, state["errors_position"]).finish(self.errors_final)
        elif not self.errors_final.exists():
            self.errors_final.touch()
        self.checkpoint_path.unlink(missing_ok=True)


def _job_cost(predictor: Predictor, s: BatchSummary) -> dict[str, Any]:
    """Energy, dollars and CO2 of the scored rows, in total and per 1,000 predictions."""
    from joules.meter import CostModel, Measurement, job_cost
    from joules.settings import load_settings

    meter = predictor.meter
    m = Measurement(s.cpu_s, s.seconds, s.energy_j, meter.method, getattr(meter, "how", ""))
    return job_cost(CostModel.from_settings(load_settings()).price(m), s.scored)


def run_batch(predictor: Predictor, config: BatchConfig) -> BatchSummary:
    return BatchJob(predictor, config).run()
