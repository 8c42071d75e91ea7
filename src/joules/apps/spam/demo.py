"""``make run``: train the spam detector if none is registered, batch-score its
test split with ``joules batch``, print what happened, then serve it online on
127.0.0.1:8000 (``joules serve spam``) until Ctrl-C."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from joules.bundle import SplitDataset
from joules.registry import Registry

HOST, PORT = "127.0.0.1", 8000
SERVE_BANNER = f"""
== joules serve spam: http://{HOST}:{PORT} (docs at /docs, metrics at /metrics; Ctrl-C stops)
   try, once it logs "ready":
   curl -s -X POST http://{HOST}:{PORT}/v1/models/spam:predict -H 'Content-Type: application/json' \\
     -d '{{"instances": [{{"text": "WINNER!! Claim your prize now, call 09061701461"}}, {{"text": "Lunch?"}}]}}'
"""


def _write_test_split(dataset_file: Path, out: Path) -> dict[str, str]:
    test = SplitDataset.read(dataset_file)["test"]
    truth = {}
    with out.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        for i, (text, label) in enumerate(zip(test.texts, test.labels, strict=True)):
            w.writerow([f"t{i}", text])
            truth[f"t{i}"] = label
    return truth


def joules(argv: list[str]) -> int:
    """Run the ``joules`` command as a user would (apps sit below the CLI: a process, not an import)."""
    return subprocess.run([sys.executable, "-m", "joules.cli.main", *argv], check=False).returncode


def main() -> int:
    registry = Registry()
    if registry.production_version("spam") is None:
        print("== no production spam model: training one (joules train spam)", flush=True)
        code = joules(["train", "spam"])
        if code:
            return code
    mv = registry.get("spam")
    print(f"\n== {mv.ref} ({mv.stage}); quality measured at training:", flush=True)
    joules(["models", "show", "spam"])
    work = registry.home / "demo"
    work.mkdir(parents=True, exist_ok=True)
    truth = _write_test_split(mv.path / "dataset.jsonl", work / "test.csv")
    print(f"\n== joules batch spam {work / 'test.csv'} -o {work / 'test-scored.csv'}", flush=True)
    code = joules(["batch", "spam", str(work / "test.csv"), "-o", str(work / "test-scored.csv"), "--overwrite"])
    if code:
        return code
    with (work / "test-scored.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    correct = sum(r["label"] == truth[r["id"]] for r in rows)
    print(f"\naccuracy on the {len(rows):,} test messages: {correct / len(rows):.4f}")
    print(SERVE_BANNER, flush=True)
    return joules(["serve", "spam", "--host", HOST, "--port", str(PORT)])


if __name__ == "__main__":
    sys.exit(main())
