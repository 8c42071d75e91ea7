"""The files a batch job writes beside its output: inputs named like them, one run at a time,
a failed start, ids Parquet cannot hold as int64, unterminated CSV quotes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from joules.serve.batch.files import JobFiles
from joules.serve.batch.io import ParquetWriter, read_rows
from tests.helpers import run_joules


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "suffix", [".partial", ".errors.jsonl.partial", ".checkpoint.json", ".checkpoint.json.tmp", ".lock", ".tmp"]
)
def test_an_input_named_like_a_file_of_the_job_is_refused_and_kept(
    spam_home: Path, tmp_path: Path, suffix: str
) -> None:
    out = tmp_path / "vv.csv"
    inp = tmp_path / f"vv.csv{suffix}"
    inp.write_text("id,text\na,hello\nb,lunch?\n")
    before = digest(inp)
    proc = run_joules("batch", "spam", str(inp), "--input-format", "csv", "-o", str(out), home=spam_home)
    assert proc.returncode == 2, proc.stderr
    assert "a file this job writes" in proc.stderr and "Traceback" not in proc.stderr
    assert digest(inp) == before
    assert not out.exists()


def test_an_input_inside_the_parquet_parts_directory_is_refused(tmp_path: Path) -> None:
    files = JobFiles.of(tmp_path / "out.parquet", "parquet")
    files.partial.mkdir()
    (files.partial / "part-000000.parquet").write_bytes(b"x")
    link = tmp_path / "innocent.parquet"
    link.symlink_to(files.partial / "part-000000.parquet")
    with pytest.raises(Exception, match="a file this job writes"):
        files.refuse_input(link)


def test_a_second_run_on_the_same_output_is_refused(spam_home: Path, tmp_path: Path) -> None:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text('{"id": 1, "text": "hello"}\n')
    with JobFiles.of(out, "jsonl").lock():  # this process is the running job
        proc = run_joules("batch", "spam", str(inp), "-o", str(out), home=spam_home)
        assert proc.returncode == 2, proc.stderr
        assert f"another joules batch (pid {os.getpid()}) is writing" in proc.stderr
        assert not out.exists()
    assert not (tmp_path / "out.jsonl.lock").exists()
    run_joules("batch", "spam", str(inp), "-o", str(out), home=spam_home, check=True)
    assert [json.loads(line)["id"] for line in out.open()] == [1]


def test_the_lock_of_a_killed_run_is_taken_over(spam_home: Path, tmp_path: Path) -> None:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text('{"id": 1, "text": "hello"}\n')
    code = (
        "import sys, time\nfrom pathlib import Path\nfrom joules.serve.batch.files import JobFiles\n"
        "with JobFiles.of(Path(sys.argv[1]), 'jsonl').lock():\n    print('locked', flush=True)\n    time.sleep(600)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert run_joules("batch", "spam", str(inp), "-o", str(out), home=spam_home).returncode == 2
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / "out.jsonl.lock").read_text().strip() == str(holder.pid)  # left behind by the kill
    run_joules("batch", "spam", str(inp), "-o", str(out), home=spam_home, check=True)
    assert out.exists() and not (tmp_path / "out.jsonl.lock").exists()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_failed_start_leaves_no_partial_files(spam_home: Path, tmp_path: Path, fmt: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    inp, out = work / "in.csv", work / f"out.{fmt}"
    inp.write_text("id,body\na,hello\n")
    proc = run_joules("batch", "spam", str(inp), "-o", str(out), home=spam_home)  # no 'text' column
    assert proc.returncode == 2 and "no 'text' column" in proc.stderr
    assert sorted(p.name for p in work.iterdir()) == ["in.csv"]


def test_jsonl_ids_of_mixed_types_or_beyond_int64_go_to_parquet_as_strings(spam_home: Path, tmp_path: Path) -> None:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.parquet"
    ids: list[object] = [1, "two", 2**70, 3.5, True, None, {"k": 1}, -(2**63)]
    inp.write_text("".join(json.dumps({"id": i, "text": f"message {n}"}) + "\n" for n, i in enumerate(ids)))
    run_joules("batch", "spam", str(inp), "-o", str(out), "--chunk-rows", "3", home=spam_home, check=True)
    table = pq.read_table(out)
    assert str(table.schema.field("id").type) == "string"
    assert table.column("id").to_pylist() == ["1", "two", str(2**70), "3.5", "true", None, '{"k": 1}', str(-(2**63))]
    # Whole numbers within int64 stay int64.
    inp.write_text("".join(json.dumps({"id": i, "text": "hi"}) + "\n" for i in (5, -(2**63), 2**63 - 1)))
    out2 = tmp_path / "ints.parquet"
    run_joules("batch", "spam", str(inp), "-o", str(out2), home=spam_home, check=True)
    assert pq.read_table(out2).column("id").to_pylist() == [5, -(2**63), 2**63 - 1]
    assert str(pq.read_table(out2).schema.field("id").type) == "int64"


def test_parquet_parts_with_int_and_string_ids_merge_as_strings(tmp_path: Path) -> None:
    writer = ParquetWriter(tmp_path / "o.parts", 0, ["id", "label", "action"])
    writer.write([{"id": 1, "label": "ham", "action": None}])
    writer.commit()
    writer.write([{"id": "x", "label": "spam", "action": "flag"}])
    writer.commit()
    writer.finish(tmp_path / "o.parquet")
    table = pq.read_table(tmp_path / "o.parquet")
    assert table.to_pylist() == [
        {"id": "1", "label": "ham", "action": None},
        {"id": "x", "label": "spam", "action": "flag"},
    ]


def test_an_unterminated_csv_quote_is_an_error_and_the_rows_after_it_are_kept(tmp_path: Path) -> None:
    inp = tmp_path / "in.csv"
    inp.write_text('id,text\na,"hello\nb,world\nc,"ok, fine"\nd,"two\nlines"\ne,bye\n')
    rows = list(read_rows(inp, "csv", {"text": "text"}, "id"))
    assert [(r.id, r.fields and r.fields["text"]) for r in rows[1:]] == [
        ("b", "world"),
        ("c", "ok, fine"),
        ("d", "two\nlines"),
        ("e", "bye"),
    ]
    assert rows[0].fields is None and rows[0].line == 2
    assert rows[0].error is not None and "unterminated quote" in rows[0].error
    # Resuming after a row counts rows the same way.
    assert [r.id for r in read_rows(inp, "csv", {"text": "text"}, "id", skip=2)] == ["c", "d", "e"]
    # At the end of the file too.
    inp.write_text('id,text\na,hi\nb,"never closed\n')
    rows = list(read_rows(inp, "csv", {"text": "text"}, "id"))
    assert rows[0].fields == {"text": "hi"} and rows[1].error is not None and "unterminated quote" in rows[1].error


def test_an_unterminated_csv_quote_through_the_cli(spam_home: Path, tmp_path: Path) -> None:
    inp, out = tmp_path / "in.csv", tmp_path / "out.csv"
    inp.write_text('id,text\na,"hello\nb,world\nc,bye\n')
    summary = json.loads(
        run_joules("batch", "spam", str(inp), "-o", str(out), "--json", home=spam_home, check=True).stdout
    )
    assert (summary["rows"], summary["scored"], summary["errors"]) == (3, 2, 1)
    errors = [json.loads(line) for line in (tmp_path / "out.csv.errors.jsonl").open()]
    assert errors[0]["line"] == 2 and "unterminated quote" in errors[0]["reason"]
