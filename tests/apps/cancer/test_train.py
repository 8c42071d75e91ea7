"""``joules train cancer``: a tabular ONNX bundle with named features, rules, and its test rows as CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from joules.apps.cancer.train import FEATURES, LABELS, logistic_onnx, train_cancer
from joules.errors import InputError
from joules.registry import Registry
from joules.runtime import Predictor
from joules.runtime.inputs import TabularConverter
from joules.settings import Settings
from tests.helpers import run_joules


@pytest.fixture(scope="module")
def cancer_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("cancer-home")
    train_cancer(registry=Registry(Settings(home=home)))
    return home


def test_logistic_graph_matches_the_formula(tmp_path: Path) -> None:
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    mean, scale, coef = rng.normal(size=3), rng.uniform(0.5, 2, 3), rng.normal(size=3)
    logistic_onnx(tmp_path / "m.onnx", mean, scale, coef, 0.25)
    x = rng.normal(size=(5, 3)).astype(np.float32)
    (logits,) = ort.InferenceSession(str(tmp_path / "m.onnx")).run(["logits"], {"features": x})
    np.testing.assert_allclose(logits[:, 0], 0.0)
    np.testing.assert_allclose(logits[:, 1], ((x - mean) / scale) @ coef + 0.25, rtol=1e-5, atol=1e-5)


def test_bundle_scores_csv_rows_by_name_with_rules(cancer_home: Path) -> None:
    reg = Registry(Settings(home=cancer_home))
    mv = reg.get("cancer")
    assert mv.metrics["test"]["f1"] >= 0.9 and mv.metrics["test"]["roc_auc"] >= 0.97
    assert mv.lineage[0]["onnx_parity_max_abs"] <= 1e-5
    bundle = reg.load("cancer")
    pre = bundle.spec.preprocess
    assert (pre.kind, pre.input, pre.features) == ("tabular", "features", FEATURES)
    examples = bundle.file("examples")
    assert examples is not None
    with examples.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == mv.metrics["test"]["n"]
    conv = TabularConverter.from_spec(pre)
    predictor = Predictor(bundle)
    out = predictor.predict_tensors(conv.batch([conv.admit(r) for r in rows]))
    accuracy = np.mean([lab == r["diagnosis"] for lab, r in zip(out.labels, rows, strict=True)])
    assert accuracy == pytest.approx(mv.metrics["test"]["accuracy"])
    for probs, action in zip(out.probabilities, out.actions, strict=True):
        malignant = probs[LABELS.index("malignant")]
        expected = "refer_to_specialist" if malignant >= 0.5 else "second_reading" if malignant >= 0.1 else None
        assert action == (expected or "routine_follow_up")
    bad = {**rows[0], "worst_area": "n/a"}
    with pytest.raises(InputError, match="feature 'worst_area': 'n/a' is not a number"):
        conv.admit(bad)


def test_cli(tmp_path: Path) -> None:
    bad = run_joules("train", "cancer", "--epochs", "3", home=tmp_path)
    assert bad.returncode == 2 and "takes no --epochs" in bad.stderr
    summary = json.loads(run_joules("train", "cancer", "--json", home=tmp_path, check=True).stdout)
    assert summary["name"] == "cancer" and summary["metrics"]["test"]["n"] == 115
