"""The batch jobs' checkpoint: refused when unreadable, over another input or with an output already there;
saved whole; finishing is idempotent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from joules.errors import DataError
from joules.serve.batch import checkpoint
from joules.serve.batch.files import JobFiles
from joules.serve.batch.io import JsonlWriter


def job(tmp_path: Path) -> tuple[Path, JobFiles]:
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": 1}\n', encoding="utf-8")
    return inp, JobFiles.of(tmp_path / "out.jsonl", "jsonl")


def test_a_new_job_has_no_checkpoint_and_refuses_an_existing_output(tmp_path: Path) -> None:
    inp, files = job(tmp_path)

    def fingerprint() -> checkpoint.Fingerprint:
        return checkpoint.input_fingerprint(inp)

    assert checkpoint.load(files, overwrite=False, fingerprint=fingerprint) is None
    files.output.write_text("x\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        checkpoint.load(files, overwrite=False, fingerprint=fingerprint)
    assert str(e.value) == f"output {str(files.output)!r} already exists; pass --overwrite to replace it"
    assert checkpoint.load(files, overwrite=True, fingerprint=fingerprint) is None


def test_a_saved_checkpoint_is_resumed_only_over_the_same_input(tmp_path: Path) -> None:
    inp, files = job(tmp_path)
    state = checkpoint.initial_state(fingerprint=checkpoint.input_fingerprint(inp), model="m:1", done=0)
    state["rows_done"] = 1
    checkpoint.save(files, state)
    assert not files.checkpoint.with_name(files.checkpoint.name + ".tmp").exists()
    ckpt = checkpoint.load(files, overwrite=False, fingerprint=lambda: checkpoint.input_fingerprint(inp))
    assert ckpt == json.loads(json.dumps(state))
    fresh = checkpoint.initial_state(fingerprint={}, model="m:1", done=0)
    assert checkpoint.resume(fresh, ckpt, files.output) == 1 and fresh["rows_done"] == 1
    inp.write_text('{"id": 1}\n{"id": 2}\n', encoding="utf-8")
    with pytest.raises(DataError) as e:
        checkpoint.load(files, overwrite=False, fingerprint=lambda: checkpoint.input_fingerprint(inp))
    assert str(e.value) == (
        f"{str(files.output)!r} has a checkpoint from a run over a different or changed input; "
        "pass --overwrite to start over"
    )
    files.checkpoint.write_text("{", encoding="utf-8")
    with pytest.raises(DataError, match=r"is unreadable \(.*\); pass --overwrite to start over"):
        checkpoint.load(files, overwrite=False, fingerprint=lambda: checkpoint.input_fingerprint(inp))


def test_finish_moves_the_outputs_into_place_and_can_run_again(tmp_path: Path) -> None:
    inp, files = job(tmp_path)
    state = checkpoint.initial_state(fingerprint=checkpoint.input_fingerprint(inp), model="m:1")
    writer = JsonlWriter(files.partial, 0)
    writer.write([{"id": 1}])
    state["output_position"] = writer.commit()
    writer.close()
    checkpoint.save(files, state)
    for _ in range(2):
        checkpoint.finish(files, state, lambda position: JsonlWriter(files.partial, position))
    assert [json.loads(line) for line in files.output.read_text(encoding="utf-8").splitlines()] == [{"id": 1}]
    assert files.errors.read_text(encoding="utf-8") == ""
    assert not files.checkpoint.exists() and not files.partial.exists()
