from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import run_joules


def test_models_commands_with_json(spam_home: Path, tiny_bundle_dir: Path) -> None:
    run_joules("import", str(tiny_bundle_dir), "--name", "spam", home=spam_home, check=True)
    listed = json.loads(run_joules("models", "list", "--json", home=spam_home, check=True).stdout)
    assert [(m["name"], m["version"], m["stage"]) for m in listed] == [("spam", 1, "production"), ("spam", 2, "none")]

    shown = json.loads(run_joules("models", "show", "spam", "--json", home=spam_home, check=True).stdout)
    assert {"name", "version", "stage", "metrics", "lineage", "files", "created_at"} <= set(shown)
    assert shown["version"] == 1 and shown["stage"] == "production"
    for split in ("validation", "test"):
        m = shown["metrics"][split]
        assert all(0 <= m[k] <= 1 for k in ("f1", "roc_auc", "accuracy"))
        assert len(m["f1_ci95"]) == 2 and m["f1_ci95"][0] <= m["f1"] <= m["f1_ci95"][1]

    assert (
        json.loads(run_joules("models", "show", "spam:2", "--json", home=spam_home, check=True).stdout)["version"] == 2
    )
    promoted = json.loads(run_joules("models", "promote", "spam", "2", "--json", home=spam_home, check=True).stdout)
    assert promoted["stage"] == "production"
    assert json.loads(run_joules("models", "show", "spam", "--json", home=spam_home, check=True).stdout)["version"] == 2

    refused = run_joules("models", "rm", "spam", "2", home=spam_home)
    assert refused.returncode == 2 and "--force" in refused.stderr
    removed = json.loads(run_joules("models", "rm", "spam", "1", "--json", home=spam_home, check=True).stdout)
    assert removed == {"removed": "spam:1"}
    table = run_joules("models", "list", home=spam_home, check=True).stdout
    assert "spam" in table and "production" in table


def test_errors_are_one_clear_line(spam_home: Path) -> None:
    for args, words in [
        (("models", "show", "nope"), "no model named 'nope'"),
        (("models", "show", "spam:9"), "no version 9"),
        (("models", "show", "../x"), "model name"),
        (("models", "promote", "spam", "x"), "positive whole number"),
        (("predict", "spam:7", "hi"), "no version 7"),
    ]:
        proc = run_joules(*args, home=spam_home)
        assert proc.returncode == 2, args
        assert words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_predict_prints_label_and_action(spam_home: Path, tmp_path: Path) -> None:
    out = run_joules("predict", "spam", "hello", "Call now to claim your prize", home=spam_home, check=True).stdout
    assert "label" in out and "action" in out
    rules = tmp_path / "r.yaml"
    rules.write_text("rules:\n  - when: spam >= 0.0\n    action: always\ndefault: never\n")
    data = json.loads(
        run_joules("predict", "spam", "hello", "--rules", str(rules), "--json", home=spam_home, check=True).stdout
    )
    assert data["predictions"][0]["action"] == "always" and data["version"] == 1
    rules.write_text("rules:\n  - when: spma >= 0.5\n    action: x\ndefault: y\n")
    proc = run_joules("predict", "spam", "hello", "--rules", str(rules), home=spam_home)
    assert proc.returncode == 2 and f"{rules}:2" in proc.stderr and "spma" in proc.stderr
