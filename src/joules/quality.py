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
    """95 % percentile intervals of F1 and ROC AUC over resampled rows.

    The percentile bootstrap of Efron and Tibshirani, *An Introduction to the
    Bootstrap* (1993), ch. 13, with rows resampled in pairs (label, prediction,
    score). Indices are drawn as ``rng.integers(0, n, (samples, n))``, the draw of
    ``scipy.stats.bootstrap(..., paired=True, method="percentile")``, so with the
    same seed both give the same interval (tests/test_quality.py holds this). A
    resample holding one class only has no AUC; it is left out of the AUC interval.
    """
    y_true, y_pred, score = np.asarray(y_true), np.asarray(y_pred), np.asarray(score)
    rng = np.random.default_rng(seed)
    n = len(y_true)
    f1s, aucs = np.empty(samples), np.empty(samples)
    # Resamples are drawn in blocks of at most ~4M indices (32 MB), so a large
    # split does not need samples x n integers at once.
    block = max(1, min(samples, _BOOTSTRAP_BLOCK_INDICES // max(n, 1)))
    for start in range(0, samples, block):
        rows = rng.integers(0, n, (min(block, samples - start), n))
        for j, idx in enumerate(rows, start):
            f1s[j] = f1_score(y_true[idx], y_pred[idx])
            aucs[j] = roc_auc(y_true[idx], score[idx])
    return {"f1_ci95": _ci95(f1s), "roc_auc_ci95": _ci95(aucs)}


_BOOTSTRAP_BLOCK_INDICES = 1 << 22


def _ci95(values: np.ndarray) -> list[float]:
    kept = values[~np.isnan(values)]
    if kept.size == 0:
        return [float("nan"), float("nan")]
    return [float(x) for x in np.percentile(kept, [2.5, 97.5])]


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
    """Exact McNemar test on paired correctness; small p means A and B differ.

    The discordant pairs (right only for A, right only for B) are Binomial(n, 1/2)
    under the null; the two-sided p-value is twice the smaller tail, capped at 1
    (McNemar 1947; the exact form as in Fagerland, Lydersen and Laake, BMC Med.
    Res. Methodol. 13:91, 2013), equal to ``scipy.stats.binomtest(k, n).pvalue``.
    The tail is summed in log space: 2**n overflows a float past n = 1023.
    """
    a = np.asarray(a_correct, dtype=bool)
    b = np.asarray(b_correct, dtype=bool)
    only_a = int(np.sum(a & ~b))
    only_b = int(np.sum(~a & b))
    n = only_a + only_b
    if n == 0:
        return {"only_a": 0, "only_b": 0, "p_value": 1.0}
    k = min(only_a, only_b)
    i = np.arange(k + 1)
    log_pmf = _log_comb(n, i) - n * math.log(2.0)
    top = float(log_pmf.max())
    tail = math.exp(top) * float(np.exp(log_pmf - top).sum())
    return {"only_a": only_a, "only_b": only_b, "p_value": min(1.0, 2.0 * tail)}


def _log_comb(n: int, k: np.ndarray) -> np.ndarray:
    lg = np.vectorize(math.lgamma, otypes=[np.float64])
    return math.lgamma(n + 1) - lg(k + 1) - lg(n - k + 1)
