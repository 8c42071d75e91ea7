"""``joules train cancer``: logistic regression on the Wisconsin breast-cancer data, as an ONNX tabular bundle.

scikit-learn's copy of the data (569 tumours, 30 numeric features of cell
nuclei, 212 malignant) is split 60/20/20 (stratified); the regularisation C
is chosen on the validation split; the model is written as a four-node ONNX
graph (standardise, MatMul, Add; softmax in postprocess), checked against
scikit-learn, and measured on the test split by scoring its rows as CSV text
through the bundle's tabular converter and ONNX Runtime, the path serving
takes. The test rows ship in the bundle (``test.csv``) to try ``joules batch``.

Source: W. N. Street, W. H. Wolberg, O. L. Mangasarian, "Nuclear feature
extraction for breast tumor diagnosis", 1993 (UCI ML repository, CC BY 4.0).
"""

from __future__ import annotations

import csv
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from joules.apps.common import register_trained, train_summary
from joules.bundle import Bundle, BundleSpec
from joules.errors import BundleError, require
from joules.quality import classification_metrics
from joules.registry import Registry, validate_name
from joules.runtime import Predictor
from joules.runtime.inputs import TabularConverter

RULES_FILE = Path(__file__).with_name("rules.yaml")
# scikit-learn's target: 0 = malignant, 1 = benign.
LABELS = ["malignant", "benign"]
INPUT = "features"
C_GRID = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0]
FRACTIONS = {"train": 0.6, "validation": 0.2, "test": 0.2}
PARITY_TOLERANCE = 1e-5
OPSET = 17


def _feature_names() -> list[str]:
    from sklearn.datasets import load_breast_cancer

    return [n.replace(" ", "_") for n in load_breast_cancer().feature_names]


FEATURES = [
    *(f"mean_{n}" for n in ("radius", "texture", "perimeter", "area", "smoothness")),
    *(f"mean_{n}" for n in ("compactness", "concavity", "concave_points", "symmetry", "fractal_dimension")),
    *(f"{n}_error" for n in ("radius", "texture", "perimeter", "area", "smoothness")),
    *(f"{n}_error" for n in ("compactness", "concavity", "concave_points", "symmetry", "fractal_dimension")),
    *(f"worst_{n}" for n in ("radius", "texture", "perimeter", "area", "smoothness")),
    *(f"worst_{n}" for n in ("compactness", "concavity", "concave_points", "symmetry", "fractal_dimension")),
]


def default_rules() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))
    return data


def split_indices(y: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {k: [] for k in FRACTIONS}
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        a = round(len(idx) * FRACTIONS["train"])
        b = a + round(len(idx) * FRACTIONS["validation"])
        parts["train"] += idx[:a].tolist()
        parts["validation"] += idx[a:b].tolist()
        parts["test"] += idx[b:].tolist()
    return {k: np.sort(np.asarray(v)) for k, v in parts.items()}


def logistic_onnx(path: Path, mean: np.ndarray, scale: np.ndarray, coef: np.ndarray, intercept: float) -> None:
    """``features`` [N, F] -> ``logits`` [N, 2] = [0, z], z = ((x - mean) / scale) . coef + intercept.

    Softmax of [0, z] is [1 - sigmoid(z), sigmoid(z)]: scikit-learn's predict_proba for classes [0, 1].
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    f = len(mean)
    w = np.zeros((f, 2), dtype=np.float32)
    w[:, 1] = coef
    b = np.array([0.0, intercept], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Sub", [INPUT, "mean"], ["centred"]),
            helper.make_node("Div", ["centred", "scale"], ["standardised"]),
            helper.make_node("MatMul", ["standardised", "weights"], ["xw"]),
            helper.make_node("Add", ["xw", "bias"], ["logits"]),
        ],
        "breast_cancer_logistic_regression",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", f])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        [
            numpy_helper.from_array(mean.astype(np.float32), "mean"),
            numpy_helper.from_array(scale.astype(np.float32), "scale"),
            numpy_helper.from_array(w, "weights"),
            numpy_helper.from_array(b, "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="joules")
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def write_csv(path: Path, x: np.ndarray, y: np.ndarray, ids: np.ndarray) -> None:
    """Rows as a user's CSV would hold them: an id, the diagnosis, the features as text."""
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "diagnosis", *FEATURES])
        for i, row, label in zip(ids, x, y, strict=True):
            w.writerow([f"tumour-{i}", LABELS[label], *(f"{v:.6g}" for v in row)])


def train_cancer(
    *, registry: Registry, name: str = "cancer", seed: int = 0, promote: bool | None = None
) -> dict[str, Any]:
    """Fit, export, measure through the bundle and register; return a summary."""
    validate_name(name)
    require("sklearn", "train")
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    started = time.perf_counter()
    data = load_breast_cancer()
    if _feature_names() != FEATURES:
        raise BundleError(f"scikit-learn's breast-cancer feature names changed: {_feature_names()}")
    x, y = data.data.astype(np.float64), data.target.astype(np.int64)
    split = split_indices(y, seed)
    tr, va, te = split["train"], split["validation"], split["test"]
    scaler = StandardScaler().fit(x[tr])
    # C by validation log-loss (F1 ties at 1.0 on 114 rows are common; log-loss still ranks them).
    scores = {}
    for c in C_GRID:
        m = LogisticRegression(C=c, max_iter=5000).fit(scaler.transform(x[tr]), y[tr])
        p = np.clip(m.predict_proba(scaler.transform(x[va]))[np.arange(len(va)), y[va]], 1e-12, 1.0)
        scores[c] = float(-np.mean(np.log(p)))
    best_c = min(scores, key=lambda c: scores[c])
    model = LogisticRegression(C=best_c, max_iter=5000).fit(scaler.transform(x[tr]), y[tr])

    with tempfile.TemporaryDirectory(prefix="joules-train-") as tmp:
        out = Path(tmp) / "bundle"
        out.mkdir()
        logistic_onnx(out / "model.onnx", scaler.mean_, scaler.scale_, model.coef_[0], float(model.intercept_[0]))
        write_csv(out / "test.csv", x[te], y[te], te)
        lineage: dict[str, Any] = {
            "step": "train",
            "app": "cancer",
            "data": {"source": "sklearn.datasets.load_breast_cancer", "rows": len(y)},
            "split": {"seed": seed, "fractions": FRACTIONS, "sizes": {k: len(v) for k, v in split.items()}},
            "model": {"kind": "StandardScaler + LogisticRegression", "C": best_c, "validation_log_loss": scores},
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        spec = BundleSpec.from_dict(
            {
                "name": name,
                "task": "classification",
                "inputs": [{"name": INPUT, "dtype": "float32", "shape": ["batch", len(FEATURES)]}],
                "preprocess": {"kind": "tabular", "input": INPUT, "features": FEATURES},
                "postprocess": {"output": "logits", "labels": LABELS, "positive_label": "malignant"},
                "rules": default_rules(),
                "files": {"examples": "test.csv"},
                "lineage": [lineage],
            }
        )
        spec.write(out)
        bundle = Bundle.load(out)
        predictor = Predictor(bundle)
        conv = TabularConverter.from_spec(bundle.spec.preprocess)
        metrics = {}
        for part, idx in (("validation", va), ("test", te)):
            # Through the serving path: CSV text cells -> converter -> ONNX Runtime -> softmax.
            rows = [dict(zip(FEATURES, (f"{v:.6g}" for v in row), strict=True)) for row in x[idx]]
            feeds = conv.batch([conv.admit(r) for r in rows])
            probs = predictor.predict_tensors(feeds, record=False).probabilities
            metrics[part] = classification_metrics(y[idx], probs, LABELS.index("malignant"))
        sk = model.predict_proba(scaler.transform(x[te]).astype(np.float32))
        onnx_probs = predictor.predict_tensors({INPUT: x[te].astype(np.float32)}, record=False).probabilities
        gap = float(np.max(np.abs(onnx_probs - sk)))
        if gap > PARITY_TOLERANCE:
            raise BundleError(f"the ONNX graph differs from scikit-learn by {gap:.2e} (> {PARITY_TOLERANCE:g})")
        lineage["onnx_parity_max_abs"] = gap
        bundle = bundle.with_spec(metrics=metrics, lineage=(lineage,))
        bundle.save()
        mv = register_trained(registry, bundle, name, promote)
    return train_summary(
        mv, metrics, C=best_c, total_seconds=round(time.perf_counter() - started, 1), onnx_parity_max_abs=gap
    )
