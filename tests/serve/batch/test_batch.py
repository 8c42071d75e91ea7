from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import DATA
from tests.helpers import JOULES, run_joules


def messages(n: int, seed: int = 7) -> list[str]:
    rows = [line.rstrip("\n").split("\t", 1)[1] for line in DATA.open(encoding="utf-8")]
    rng = random.Random(seed)
    return [rng.choice(rows) for _ in range(n)]


def read_output(path: Path) -> list[dict]:
    if path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.open(encoding="utf-8")]
    return pq.read_table(path).to_pylist()


@pytest.mark.parametrize(
    ("src", "dst"), [("csv", "csv"), ("jsonl", "jsonl"), ("parquet", "parquet"), ("csv", "parquet"), ("jsonl", "csv")]
)
def test_batch_formats_end_to_end(spam_home: Path, tmp_path: Path, src: str, dst: str) -> None:
    texts = messages(300)
    inp, out = tmp_path / f"in.{src}", tmp_path / f"out.{dst}"
    ids = [f"m{i}" for i in range(len(texts))]
    if src == "csv":
        with inp.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["msg_id", "body", "other"])
            w.writerows([i, t, "x"] for i, t in zip(ids, texts, strict=True))
    elif src == "jsonl":
        inp.write_text("".join(json.dumps({"msg_id": i, "body": t}) + "\n" for i, t in zip(ids, texts, strict=True)))
    else:
        pq.write_table(pa.table({"msg_id": ids, "body": texts}), inp)
    proc = run_joules(
        "batch",
        "spam",
        str(inp),
        "-o",
        str(out),
        "--text-column",
        "body",
        "--id-column",
        "msg_id",
        "--batch-size",
        "16",
        "--chunk-rows",
        "100",
        "--json",
        home=spam_home,
        check=True,
    )
    summary = json.loads(proc.stdout)
    assert summary["rows"] == summary["processed"] == 300 and summary["errors"] == 0
    assert sum(summary["actions"].values()) == 300 and summary["energy_j"] > 0 and summary["rows_per_s"] > 0
    rows = read_output(out)
    assert [r["msg_id"] for r in rows] == ids
    assert set(rows[0]) == {"msg_id", "label", "action", "prob_ham", "prob_spam"}
    # Same answers as one-off predictions through the CLI.
    one = json.loads(run_joules("predict", "spam", texts[0], texts[1], "--json", home=spam_home, check=True).stdout)
    for r, p in zip(rows[:2], one["predictions"], strict=True):
        assert r["label"] == p["label"] and r["action"] == p["action"]
        assert abs(float(r["prob_spam"]) - p["probabilities"]["spam"]) < 1e-5
    assert (tmp_path / f"out.{dst}.errors.jsonl").read_text() == ""
    assert not list(tmp_path.glob("*.checkpoint.json")) and not list(tmp_path.glob("*.partial"))


def test_bad_rows_go_to_the_errors_file(spam_home: Path, tmp_path: Path) -> None:
    inp = tmp_path / "in.csv"
    good = messages(5)
    with inp.open("wb") as f:
        f.write(b"id,text\n")
        f.write(f"a,{good[0]!r}\n".encode())
        f.write(b"b,\n")  # empty text
        f.write(b"c,caf\xe9 latin-1 bytes\n")  # invalid UTF-8
        f.write(b"d\n")  # malformed: one field
        f.write(b"e,   \n")  # blank text
        f.write(f"f,{good[1]!r}\n".encode())
    out = tmp_path / "out.jsonl"
    summary = json.loads(
        run_joules("batch", "spam", str(inp), "-o", str(out), "--json", home=spam_home, check=True).stdout
    )
    assert (summary["rows"], summary["processed"], summary["errors"]) == (6, 2, 4)
    assert [r["id"] for r in read_output(out)] == ["a", "f"]
    errors = [json.loads(line) for line in (tmp_path / "out.jsonl.errors.jsonl").open()]
    assert [(e["row"], e["id"]) for e in errors] == [(1, "b"), (2, "c"), (3, "d"), (4, "e")]
    reasons = " | ".join(e["reason"] for e in errors)
    assert [e["reason"] for e in errors] == [
        "field 'text' is empty or only whitespace",  # admission's words, as online and stream say them
        "field 'text' is not valid UTF-8 text",
        "malformed CSV line: 1 fields, the header has 2",
        "field 'text' is empty or only whitespace",
    ], reasons


def test_bad_jsonl_lines(spam_home: Path, tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(
        b'{"id": 1, "text": "hello"}\n{"id": 2, "text": \n[1, 2]\n{"id": 4, "text": 5}\n'
        b'{"id": 5, "text": "caf\xe9"}\n{"id": 6}\n{"id": 7, "text": "bye"}\n\xff\xfe\n'
    )
    out = tmp_path / "out.csv"
    summary = json.loads(
        run_joules("batch", "spam", str(inp), "-o", str(out), "--json", home=spam_home, check=True).stdout
    )
    assert (summary["rows"], summary["errors"]) == (8, 6)
    assert [r["id"] for r in read_output(out)] == ["1", "7"]
    reasons = [json.loads(line)["reason"] for line in (tmp_path / "out.csv.errors.jsonl").open()]
    assert reasons[0].startswith("malformed JSON") and "expected a JSON object" in reasons[1]
    assert reasons[2:5] == [
        "field 'text' must be a string, got int",
        "field 'text' is not valid UTF-8 text",
        "missing field 'text'",
    ]
    assert reasons[5].startswith("malformed JSON"), "a line that is not UTF-8 at all is not JSON either"


def test_existing_output_needs_overwrite(spam_home: Path, tmp_path: Path) -> None:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text('{"text": "hi"}\n')
    run_joules("batch", "spam", str(inp), "-o", str(out), home=spam_home, check=True)
    proc = run_joules("batch", "spam", str(inp), "-o", str(out), home=spam_home)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    run_joules("batch", "spam", str(inp), "-o", str(out), "--overwrite", home=spam_home, check=True)
    proc = run_joules("batch", "spam", str(tmp_path / "missing.csv"), "-o", str(tmp_path / "o.csv"), home=spam_home)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


# csv: the default chunk sizing (a checkpoint every ~2 s, from a first chunk of 256 rows);
# parquet: fixed chunks of 512 rows.
@pytest.mark.parametrize(("fmt", "chunk_rows"), [("csv", None), ("parquet", 512)])
def test_sigkill_and_resume_keep_every_row_exactly_once(
    spam_home: Path, tmp_path: Path, fmt: str, chunk_rows: int | None
) -> None:
    n = 24_000
    texts = messages(n, seed=11)
    inp, out = tmp_path / "in.csv", tmp_path / f"out.{fmt}"
    with inp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        for i, t in enumerate(texts):
            w.writerow([f"r{i}", "" if i % 997 == 0 else t])  # a bad row now and then
    bad = sum(1 for i in range(n) if i % 997 == 0)
    chunking = [] if chunk_rows is None else ["--chunk-rows", str(chunk_rows)]
    args = [*JOULES, "batch", "spam", str(inp), "-o", str(out), *chunking, "--no-progress"]
    env = {**os.environ, "JOULES_HOME": str(spam_home)}
    ckpt = tmp_path / f"out.{fmt}.checkpoint.json"
    kills = 0
    rng = random.Random(3)

    def rows_done() -> int:
        try:
            return int(json.loads(ckpt.read_text())["rows_done"])
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return 0

    for _ in range(3):
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        done_before = rows_done()
        # Kill once this run has written a checkpoint of its own (observed, not a time window), at a
        # random moment after it: between writes, fsyncs or checkpoints. Default chunks hold at most
        # 8,192 rows, so a run of 24,000 rows writes several checkpoints however fast the machine is.
        while time.monotonic() < deadline and proc.poll() is None:
            if rows_done() > done_before:
                time.sleep(rng.random() * 0.05)
                break
            time.sleep(0.005)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 1, "the job finished before it could be killed: raise n"
    assert not out.exists()
    final = run_joules("batch", "spam", str(inp), "-o", str(out), "--json", "--no-progress", home=spam_home, check=True)
    summary = json.loads(final.stdout)
    assert 0 < summary["processed"] < n - bad, "the last run resumed from a checkpoint"
    assert summary["rows"] == n and summary["errors"] == bad
    ids = [r["id"] for r in read_output(out)]
    assert ids == [f"r{i}" for i in range(n) if i % 997 != 0], "every good row exactly once, in input order"
    errors = [json.loads(line)["row"] for line in (tmp_path / f"out.{fmt}.errors.jsonl").open()]
    assert errors == [i for i in range(n) if i % 997 == 0]
    assert sum(summary["actions"].values()) == n - bad


def test_a_row_that_makes_the_model_fail_is_an_error_row_and_the_job_goes_on(tmp_path: Path) -> None:
    """The model call holding a failing row is split down to it: one error row, the others scored."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    # x [N, 2] -> y = x @ w, except that a row with x[0] == 13 makes a Gather index out of range:
    # ONNX Runtime raises for the whole call, as a real model does on an input it cannot take.
    graph = helper.make_graph(
        [
            helper.make_node("Slice", ["x", "s0", "s1", "ax"], ["x0"]),
            helper.make_node("Cast", ["x0"], ["i0"], to=TensorProto.INT64),
            helper.make_node("Sub", ["i0", "thirteen"], ["d"]),
            helper.make_node("Abs", ["d"], ["ad"]),
            helper.make_node("Min", ["ad", "one"], ["m"]),
            helper.make_node("Sub", ["one", "m"], ["bad"]),  # 1 where x[0] == 13, else 0
            helper.make_node("Mul", ["bad", "big"], ["idx"]),
            helper.make_node("Squeeze", ["idx", "ax"], ["idx1"]),
            helper.make_node("Gather", ["table", "idx1"], ["g"]),  # index 1000 is out of range
            helper.make_node("Unsqueeze", ["g", "ax"], ["g1"]),
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "g1"], ["logits"]),
        ],
        "fails-on-13",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        [
            numpy_helper.from_array(np.array([0], np.int64), "s0"),
            numpy_helper.from_array(np.array([1], np.int64), "s1"),
            numpy_helper.from_array(np.array([1], np.int64), "ax"),
            numpy_helper.from_array(np.array(13, np.int64), "thirteen"),
            numpy_helper.from_array(np.array(1, np.int64), "one"),
            numpy_helper.from_array(np.array(1000, np.int64), "big"),
            numpy_helper.from_array(np.zeros((1,), np.float32), "table"),
            numpy_helper.from_array(np.array([[1, -1], [-1, 1]], np.float32), "w"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "m.onnx"))
    (tmp_path / "m.yaml").write_text(
        "task: classification\npreprocess: {kind: tensors}\npostprocess: {output: logits, labels: [a, b]}\n"
    )
    home = tmp_path / "home"
    run_joules(
        "import",
        str(tmp_path / "m.onnx"),
        "--spec",
        str(tmp_path / "m.yaml"),
        "--name",
        "m",
        "--promote",
        home=home,
        check=True,
    )
    rows = [[float(i), 1.0] for i in range(40)]  # row 13 fails the model
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": f"r{i}", "x": r}) + "\n" for i, r in enumerate(rows)))
    out = tmp_path / "out.csv"
    summary = json.loads(run_joules("batch", "m", str(inp), "-o", str(out), "--json", home=home, check=True).stdout)
    assert (summary["rows"], summary["scored"], summary["errors"]) == (40, 39, 1)
    assert [r["id"] for r in read_output(out)] == [f"r{i}" for i in range(40) if i != 13]
    (err,) = [json.loads(line) for line in (tmp_path / "out.csv.errors.jsonl").open()]
    assert err["row"] == 13 and err["id"] == "r13" and err["reason"].startswith("the model failed on this row")


def test_batch_summary_is_priced(spam_home: Path, tmp_path: Path) -> None:
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("".join(json.dumps({"text": t}) + "\n" for t in messages(20)))
    summary = json.loads(
        run_joules("batch", "spam", str(inp), "-o", str(out), "--json", home=spam_home, check=True).stdout
    )
    cost = summary["cost"]
    for part in ("total", "per_1000"):
        assert all(cost[part][k] > 0 for k in ("energy_j", "usd", "co2_g")), cost
    assert cost["total"]["energy_j"] == pytest.approx(summary["energy_j"], abs=1e-3)
    assert cost["per_1000"]["energy_j"] == pytest.approx(1000 * cost["total"]["energy_j"] / 20)
