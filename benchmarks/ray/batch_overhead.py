"""Ray batch against the local engine on this machine: what Ray Data costs on one node.

Builds a CSV of ``--rows`` SMS messages, runs `joules batch` with ``--engine local`` and with
``--engine ray`` (a local Ray started and stopped by the command, as a user gets it), and prints the
wall time of each command (Ray's start and stop included) and the rows/s the job itself reports.

    JOULES_HOME=... PYTHONPATH=src .venv/bin/python benchmarks/ray/batch_overhead.py --rows 5000
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "sms_spam_collection" / "SMSSpamCollection.tsv"


def build_csv(path: Path, rows: int, seed: int = 0) -> None:
    msgs = [line.rstrip("\n").split("\t", 1)[1] for line in DATA.open(encoding="utf-8")]
    rng = random.Random(seed)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows([f"r{i}", rng.choice(msgs)] for i in range(rows))


def run(model: str, src: Path, out: Path, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "joules.cli.main", "batch", model, str(src), "-o", str(out), "--json"]
    t = time.perf_counter()
    proc = subprocess.run([*cmd, "--no-progress", "--overwrite", *extra], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    s = json.loads(proc.stdout)
    return {"wall_s": round(wall, 1), "job_rows_per_s": s["rows_per_s"], "rows_per_s_wall": round(s["rows"] / wall, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="spam")
    p.add_argument("--rows", type=int, default=5000)
    p.add_argument("--actors", type=int, help="--actors for the Ray run (default: the engine's)")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="joules-ray-batch-"))
    src = work / "in.csv"
    build_csv(src, args.rows)
    result = {"rows": args.rows, "local": run(args.model, src, work / "local.csv")}
    extra = ["--engine", "ray", *(["--actors", str(args.actors)] if args.actors else [])]
    result["ray"] = run(args.model, src, work / "ray.csv", *extra)
    result["ray_over_local_wall"] = round(result["ray"]["wall_s"] / result["local"]["wall_s"], 2)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
