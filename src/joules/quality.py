"""Quality of a classifier on a labelled split: F1, ROC AUC, accuracy, with
bootstrap confidence intervals, and McNemar's test for paired comparisons.

Pure numpy, so evaluation never needs torch or scikit-learn.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

BOOTSTRAP_SAMPLES = 1000


def f1_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """F1 of the positive class (1) from 0/1 arrays."""
    tp = float(np.sum((y_pred == 1) & (y_true == 1)))
    fp = float(np.sum((y_pred == 1) & (y_true == 0)))
    fn = float(np.sum((y_pred == 0) & (y_true == 1)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve: the Mann-Whitney U statistic with ties counted half."""
    y = np.asarray(y_true).astype(bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    s = np.asarray(score)[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # Average ranks over tied scores.
    _, first, counts = np.unique(s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def bootstrap_ci(
    y_true: np.ndarray, y_pred: np.ndarray, score: np.ndarray, *, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> dict[str, list[float]]:
    """95 % percentile intervals of F1 and ROC AUC over resampled rows."""
    rng = np.random.default_rng(seed)
    n = len(y_true)
    f1s, aucs = np.empty(samples), np.empty(samples)
    for b in range(samples):
        idx = rng.integers(0, n, n)
        f1s[b] = f1_score(y_true[idx], y_pred[idx])
        aucs[b] = roc_auc(y_true[idx], score[idx])
    ci = lambda a: [float(x) for x in np.nanpercentile(a, [2.5, 97.5])]  # noqa: E731
    return {"f1_ci95": ci(f1s), "roc_auc_ci95": ci(aucs)}


def classification_metrics(
    y_true: np.ndarray, probabilities: np.ndarray, positive: int, *, bootstrap: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> dict[str, Any]:
    """Metrics of the ``positive`` class (column index) as fractions in [0, 1]."""
    y_true = np.asarray(y_true)
    probs = np.asarray(probabilities)
    pred_class = probs.argmax(axis=1)
    yt = (y_true == positive).astype(np.int8)
    yp = (pred_class == positive).astype(np.int8)
    score = probs[:, positive]
    tp = int(np.sum((yp == 1) & (yt == 1)))
    fp = int(np.sum((yp == 1) & (yt == 0)))
    fn = int(np.sum((yp == 0) & (yt == 1)))
    out: dict[str, Any] = {
        "n": len(yt),
        "positives": int(yt.sum()),
        "f1": f1_score(yt, yp),
        "roc_auc": roc_auc(yt, score),
        "accuracy": float(np.mean(pred_class == y_true)),
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
    }
    if bootstrap:
        out.update(bootstrap_ci(yt, yp, score, samples=bootstrap, seed=seed))
    return out


def mcnemar(a_correct: np.ndarray, b_correct: np.ndarray) -> dict[str, float]:
    """Exact (binomial) McNemar test on paired correctness; small p means A and B differ."""
    a = np.asarray(a_correct, dtype=bool)
    b = np.asarray(b_correct, dtype=bool)
    only_a = int(np.sum(a & ~b))
    only_b = int(np.sum(~a & b))
    n = only_a + only_b
    if n == 0:
        return {"only_a": 0, "only_b": 0, "p_value": 1.0}
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return {"only_a": only_a, "only_b": only_b, "p_value": min(1.0, 2.0 * tail)}
