"""``make run``: train the spam detector if none is registered, then batch-score
its test split with ``joules batch`` and print what happened."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from joules.bundle import SplitDataset
from joules.cli.main import main as joules
from joules.registry import Registry


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
    return 0


if __name__ == "__main__":
    sys.exit(main())
