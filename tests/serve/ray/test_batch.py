"""``joules batch --engine ray``: the local engine's rows, error rows and summary, through a Ray Data actor pool;
a Ray worker or the driver killed mid-job still ends with every row exactly once."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import JOULES, run_joules
from tests.serve.batch.test_batch import messages, read_output
from tests.serve.ray.conftest import RayHead, model_workers


def write_input(path: Path, n: int, *, bad: bool = True) -> None:
    """``n`` real SMS messages, and (``bad``) rows that must become error rows: a malformed line, an empty text,
    a line with too many fields."""
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        for i, t in enumerate(messages(n)):
            w.writerow([f"m{i}", t])
            if bad and i == 5:
                f.write('m-bad,"unterminated\n')
            if bad and i == 9:
                w.writerow(["m-empty", "  "])
            if bad and i == 12:
                w.writerow(["m-wide", "a", "b"])


def batch(home: Path, inp: Path, out: Path, *extra: str, check: bool = True) -> dict:
    proc = run_joules(
        "batch", "spam", str(inp), "-o", str(out), "--json", "--no-progress", *extra, home=home, check=check
    )
    return json.loads(proc.stdout)


def raylets() -> set[int]:
    return {int(p) for p in subprocess.run(["pgrep", "-x", "raylet"], capture_output=True, text=True).stdout.split()}


def test_ray_batch_matches_local_row_for_row(spam_home: Path, tmp_path: Path, ray_head: RayHead) -> None:
    inp = tmp_path / "in.csv"
    write_input(inp, 300)
    local = batch(spam_home, inp, tmp_path / "local.csv", "--batch-size", "16")
    ray = batch(
        spam_home,
        inp,
        tmp_path / "ray.csv",
        "--engine",
        "ray",
        "--address",
        ray_head.address,
        "--chunk-rows",
        "40",
        "--batch-size",
        "16",
        "--actors",
        "2",
    )
    assert (tmp_path / "ray.csv").read_bytes() == (tmp_path / "local.csv").read_bytes()
    errors = (tmp_path / "ray.csv.errors.jsonl").read_text()
    assert errors == (tmp_path / "local.csv.errors.jsonl").read_text()
    reasons = [json.loads(line)["reason"] for line in errors.splitlines()]
    assert len(reasons) == 3 and "unterminated quote" in reasons[0] and "empty" in reasons[1], reasons
    assert set(ray) == set(local)
    for key in ("rows", "processed", "errors", "actions", "labels", "scored"):
        assert ray[key] == local[key], key
    assert ray["cost"]["predictions"] == 300 and ray["cost"]["total"]["energy_j"] > 0


def test_ray_batch_parquet_and_jsonl(spam_home: Path, tmp_path: Path, ray_head: RayHead) -> None:
    texts = messages(60)
    inp = tmp_path / "in.jsonl"
    lines = [json.dumps({"id": i, "text": t}) for i, t in enumerate(texts)]
    lines.insert(7, "{not json")
    inp.write_text("\n".join(lines) + "\n")
    for out in ("local.parquet", "ray.parquet"):
        extra = ("--engine", "ray", "--address", ray_head.address) if out.startswith("ray") else ()
        batch(spam_home, inp, tmp_path / out, "--chunk-rows", "16", *extra)
    assert read_output(tmp_path / "ray.parquet") == read_output(tmp_path / "local.parquet")
    assert (tmp_path / "ray.parquet.errors.jsonl").read_text() == (tmp_path / "local.parquet.errors.jsonl").read_text()


def _ids(path: Path) -> list[str]:
    return [r["id"] for r in read_output(path)]


def test_killed_ray_worker_is_retried_and_rows_are_exactly_once(
    spam_home: Path, tmp_path: Path, ray_head: RayHead
) -> None:
    inp = tmp_path / "in.csv"
    write_input(inp, 2000, bad=False)
    out = tmp_path / "ray.csv"
    env = {**os.environ, "JOULES_HOME": str(spam_home)}
    args = ["batch", "spam", str(inp), "-o", str(out), "--no-progress", "--engine", "ray"]
    job = subprocess.Popen(
        [*JOULES, *args, "--address", ray_head.address, "--chunk-rows", "32", "--actors", "1", "--threads", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    partial = out.with_name(out.name + ".partial")
    killed = None
    end = time.monotonic() + 240
    while killed is None and time.monotonic() < end and job.poll() is None:
        workers = model_workers()
        if workers and partial.exists() and partial.stat().st_size > 200:  # mid-job: some rows are written
            os.kill(workers[0], signal.SIGKILL)
            killed = workers[0]
        time.sleep(0.2)  # polling for a worker with the model loaded, bounded by the deadline
    assert killed is not None, f"no model worker seen mid-job (job exit {job.poll()})"
    _, err = job.communicate(timeout=600)
    assert job.returncode == 0, err[-3000:]
    batch(spam_home, inp, tmp_path / "local.csv", "--chunk-rows", "500")
    assert _ids(out) == _ids(tmp_path / "local.csv")  # every row exactly once, in order
    assert out.read_bytes() == (tmp_path / "local.csv").read_bytes()


@pytest.mark.slow
def test_killed_driver_rerun_finishes_without_duplicates(spam_home: Path, tmp_path: Path, ray_head: RayHead) -> None:
    inp = tmp_path / "in.csv"
    write_input(inp, 1500)
    out = tmp_path / "ray.csv"
    env = {**os.environ, "JOULES_HOME": str(spam_home)}
    extra = ["--engine", "ray", "--address", ray_head.address, "--chunk-rows", "32"]
    job = subprocess.Popen(
        [*JOULES, "batch", "spam", str(inp), "-o", str(out), "--no-progress", *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint = out.with_name(out.name + ".checkpoint.json")
    end = time.monotonic() + 240
    while time.monotonic() < end and job.poll() is None:
        if checkpoint.exists() and json.loads(checkpoint.read_text() or "{}").get("rows_done", 0) >= 96:
            break
        time.sleep(0.2)  # polling for a few checkpoints, bounded by the deadline
    assert job.poll() is None, "the job ended before it could be killed"
    job.send_signal(signal.SIGKILL)
    job.wait()
    summary = batch(spam_home, inp, out, *extra)
    assert summary["resumed_from"] >= 96
    batch(spam_home, inp, tmp_path / "local.csv")
    assert out.read_bytes() == (tmp_path / "local.csv").read_bytes()
    assert (tmp_path / "ray.csv.errors.jsonl").read_text() == (tmp_path / "local.csv.errors.jsonl").read_text()


def descendant_raylets(pid: int) -> set[int]:
    """The raylet processes started under ``pid`` (its children, their children...): this job's own Ray,
    not another one running on the machine at the same time."""
    parent: dict[int, int] = {}
    names: dict[int, str] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:  # the process exited while we looked
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        parent[int(d.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
        names[int(d.name)] = name
    found = set()
    for p, name in names.items():
        q = p
        while name == "raylet" and q > 1:
            q = parent.get(q, 0)
            if q == pid:
                found.add(p)
                break
    return found


def test_without_address_a_local_ray_is_started_and_stopped(spam_home: Path, tmp_path: Path) -> None:
    """The command starts a Ray of its own (seen as a raylet under its process while it runs) and stops it:
    once it has exited, that raylet is gone. Another Ray on the machine does not count either way."""
    inp = tmp_path / "in.csv"
    write_input(inp, 20, bad=False)
    env = {**os.environ, "JOULES_HOME": str(spam_home)}
    cmd = [*JOULES, "batch", "spam", str(inp), "-o", str(tmp_path / "ray.csv"), "--json", "--no-progress"]
    proc = subprocess.Popen([*cmd, "--engine", "ray"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    ours: set[int] = set()
    while proc.poll() is None:
        ours |= descendant_raylets(proc.pid)
        time.sleep(0.2)  # sampling the command's process tree while it runs
    out, err = proc.communicate()
    assert proc.returncode == 0, err.decode()[-3000:]
    assert json.loads(out)["rows"] == 20
    assert ours, "no raylet was seen under the command: it did not start a Ray of its own"
    end = time.monotonic() + 30
    while ours & raylets() and time.monotonic() < end:
        time.sleep(0.5)  # Ray's processes exit shortly after ray.shutdown(); bounded by the deadline
    assert not ours & raylets(), "joules batch --engine ray left its Ray running"


def test_ray_flags_need_engine_ray(spam_home: Path, tmp_path: Path) -> None:
    inp = tmp_path / "in.csv"
    write_input(inp, 3, bad=False)
    proc = run_joules("batch", "spam", str(inp), "-o", str(tmp_path / "o.csv"), "--actors", "2", home=spam_home)
    assert proc.returncode == 2 and "--engine ray" in proc.stderr
