"""A batch job's checkpoint, shared by the classifier job (``job.py``) and the generation job (``generate.py``).

After each chunk the job appends its output and error rows, makes them durable (fsync) and only then
records the checkpoint (``OUT.checkpoint.json``: written to a temporary file and renamed, so it is whole or
absent): how many input rows are done, where each output file ends, and the job's running tallies. A run
that finds a checkpoint cuts the outputs back to it and carries on after its last row; once every chunk is
written the state says ``finalizing``, and finishing (moving the outputs into place) is idempotent, so a
kill at any moment is finished by the next run.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from joules.errors import DataError
from joules.serve.batch.files import JobFiles
from joules.serve.batch.io import JsonlWriter, ResultWriter, Row

CHECKPOINT_VERSION = 1

Fingerprint = dict[str, Any]


def input_fingerprint(path: Path) -> Fingerprint:
    """What tells an input file apart from a changed one: a checkpoint is only resumed over the same."""
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def initial_state(*, fingerprint: Fingerprint, model: str, **tallies: Any) -> dict[str, Any]:
    """The state of a job that has done nothing yet; ``tallies`` are the job's own counters, all zero."""
    return {
        "version": CHECKPOINT_VERSION,
        "input": fingerprint,
        "model": model,
        "rows_done": 0,
        "output_position": 0,
        "errors_position": 0,
        "errors": 0,
        **tallies,
        "energy_j": 0.0,
        "cpu_s": 0.0,
        "usd": 0.0,
        "co2_g": 0.0,
        "status": "running",
    }


def load(files: JobFiles, *, overwrite: bool, fingerprint: Callable[[], Fingerprint]) -> dict[str, Any] | None:
    """The checkpoint of an unfinished run over the same input, or None for a new job.

    DataError if the checkpoint is unreadable, was taken over another input, or the output already exists
    without one (``overwrite``: everything of an earlier run is removed instead). The caller checks that the
    checkpoint's model and settings are its own."""
    if overwrite:
        files.discard_partials()
        files.checkpoint.unlink(missing_ok=True)
        return None
    if files.checkpoint.exists():
        try:
            ckpt: dict[str, Any] = json.loads(files.checkpoint.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, OSError) as e:
            raise DataError(
                f"checkpoint {str(files.checkpoint)!r} is unreadable ({e}); pass --overwrite to start over"
            ) from e
        if ckpt.get("input") != fingerprint():
            raise DataError(
                f"{str(files.output)!r} has a checkpoint from a run over a different or changed input; "
                "pass --overwrite to start over"
            )
        return ckpt
    if files.output.exists():
        raise DataError(f"output {str(files.output)!r} already exists; pass --overwrite to replace it")
    return None


def resume(state: dict[str, Any], ckpt: dict[str, Any] | None, output: Path) -> int:
    """Take the checkpoint's values into ``state``; the rows done before this run (0 for a new job)."""
    if ckpt is None:
        return 0
    state.update(ckpt)
    print(f"resuming {output} after row {state['rows_done']:,}", file=sys.stderr)
    return int(state["rows_done"])


def save(files: JobFiles, state: dict[str, Any]) -> None:
    tmp = files.checkpoint.with_name(files.checkpoint.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, files.checkpoint)


def write_chunks(
    files: JobFiles,
    state: dict[str, Any],
    writer: ResultWriter,
    judged: Iterable[tuple[list[Row], list[dict[str, Any]], list[dict[str, Any]]]],
    *,
    desc: str,
    progress: bool,
) -> int:
    """Write each chunk's output and error rows, make them durable, then checkpoint; the output rows written.

    ``judged`` yields each chunk with its output and error rows, computed as it is iterated (the tallies go
    into ``state`` there). When every chunk is written the state says ``finalizing``."""
    from tqdm import tqdm

    errors = JsonlWriter(files.errors_partial, state["errors_position"])
    bar = tqdm(
        desc=desc,
        unit=" rows",
        initial=state["rows_done"],
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
        mininterval=0.5,
    )
    written = 0
    try:
        for chunk, out_rows, err_rows in judged:
            writer.write(out_rows)
            errors.write(err_rows)
            written += len(out_rows)
            state["output_position"] = writer.commit()
            state["errors_position"] = errors.commit()
            state["rows_done"] = chunk[-1].index + 1
            save(files, state)
            bar.update(len(chunk))
    finally:
        bar.close()
        writer.close()
        errors.close()
    state["status"] = "finalizing"
    save(files, state)
    return written


def run_to_end(
    files: JobFiles,
    state: dict[str, Any],
    ckpt: dict[str, Any] | None,
    writer: Callable[[int], ResultWriter],
    judged: Iterable[tuple[list[Row], list[dict[str, Any]], list[dict[str, Any]]]],
    *,
    progress: bool,
) -> tuple[int, int]:
    """Resume from ``ckpt`` (None: a new job), write every chunk not done yet (``write_chunks``), finish.

    ``writer(position)`` opens the output's partial file at a position; ``judged`` is read lazily, after the
    checkpoint's values are in ``state``. Returns the rows done before this run and the output rows it wrote."""
    resumed_from = resume(state, ckpt, files.output)
    written = 0
    if state["status"] == "running":
        desc = f"batch {state['model']}"
        written = write_chunks(files, state, writer(state["output_position"]), judged, desc=desc, progress=progress)
    finish(files, state, writer)
    return resumed_from, written


def finish(files: JobFiles, state: dict[str, Any], writer: Callable[[int], ResultWriter]) -> None:
    """Move finished outputs into place; idempotent, so a kill here is finished by the next run."""
    if files.partial.exists():
        writer(state["output_position"]).finish(files.output)
    if files.errors_partial.exists():
        JsonlWriter(files.errors_partial, state["errors_position"]).finish(files.errors)
    elif not files.errors.exists():
        files.errors.touch()
    files.checkpoint.unlink(missing_ok=True)
