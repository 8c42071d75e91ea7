"""Memory of `joules batch` on a large input: RSS sampled while it runs.

Builds a CSV of the requested size from SMS messages (each row several messages
joined, so rows are long and the file grows fast), runs `joules batch` on it
for a while and samples the process's resident memory. Flat RSS across the
run is the claim; the script prints RSS at each sample and the spread.

    JOULES_HOME=... .venv/bin/python benchmarks/batch/memory.py --model spam --size-mb 1024 --seconds 120
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


def build_csv(path: Path, size_mb: int, seed: int = 0) -> int:
    msgs = [line.rstrip("\n").split("\t", 1)[1] for line in DATA.open(encoding="utf-8")]
    rng = random.Random(seed)
    target = size_mb * 1024 * 1024
    rows = 0
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        while f.tell() < target:
            for _ in range(1000):
                w.writerow([f"r{rows}", " ".join(rng.choice(msgs) for _ in range(rng.randint(1, 12)))])
                rows += 1
    return rows


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="spam")
    p.add_argument("--size-mb", type=int, default=1024)
    p.add_argument("--seconds", type=float, default=120)
    p.add_argument("--workdir", type=Path)
    args = p.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="joules-batch-mem-"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"input-{args.size_mb}mb.csv"
    if not src.exists():
        t = time.perf_counter()
        n = build_csv(src, args.size_mb)
        print(
            f"built {src} ({src.stat().st_size / 2**20:.0f} MiB, {n:,} rows) in {time.perf_counter() - t:.0f} s",
            file=sys.stderr,
        )
    out = work / "out.csv"
    cmd = [
        str(ROOT / ".venv/bin/joules"),
        "batch",
        args.model,
        str(src),
        "-o",
        str(out),
        "--overwrite",
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = []
    started = time.perf_counter()
    ckpt = out.with_name(out.name + ".checkpoint.json")
    while proc.poll() is None and time.perf_counter() - started < args.seconds:
        time.sleep(2)
        try:
            rows = json.loads(ckpt.read_text())["rows_done"]
        except (OSError, ValueError, KeyError):
            rows = 0
        samples.append((time.perf_counter() - started, rows, rss_mb(proc.pid)))
        print(f"t={samples[-1][0]:6.1f}s rows={rows:>9,} rss={samples[-1][2]:7.1f} MiB", flush=True)
    proc.kill()
    proc.wait()
    late = [s[2] for s in samples if s[1] > 0]
    if late:
        print(
            f"\nRSS after the first checkpoint: min {min(late):.0f} MiB, max {max(late):.0f} MiB "
            f"over {samples[-1][1]:,} rows of a {args.size_mb} MiB input (cmd: {' '.join(cmd)})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
