"""The flagship, trained for real: all-MiniLM-L6-v2 fine-tuned on the SMS split (slow: minutes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import run_joules


@pytest.mark.slow
def test_full_training_meets_the_quality_targets(tmp_path: Path) -> None:
    home = tmp_path / "home"
    out = json.loads(run_joules("train", "spam", "--no-progress", "--json", home=home, timeout=3600, check=True).stdout)
    test = out["metrics"]["test"]
    print(f"trained in {out['train_seconds']} s; test F1 {test['f1']:.4f} {test['f1_ci95']}, AUC {test['roc_auc']:.4f}")
    assert test["f1"] >= 0.95 and test["roc_auc"] >= 0.99
    assert out["onnx_parity_max_abs"] <= 1e-4
    shown = json.loads(run_joules("models", "show", "spam", "--json", home=home, check=True).stdout)
    assert shown["stage"] == "production" and shown["metrics"]["test"]["f1"] == test["f1"]
