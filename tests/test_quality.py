"""joules.quality against the references: scikit-learn's F1 and ROC AUC, scipy's
bootstrap and binomial test, on random cases drawn by hypothesis.

Scores are drawn from a few values so that ties are common: ROC AUC with ties
is where a hand-written rank statistic goes wrong.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn import metrics as sk

from joules.quality import bootstrap_ci, classification_metrics, f1_score, mcnemar, roc_auc


@st.composite
def labelled(draw: st.DrawFn, min_size: int = 1, max_size: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y_true, y_pred, score): 0/1 labels, 0/1 predictions, scores with many ties."""
    n = draw(st.integers(min_size, max_size))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    p_pos = draw(st.floats(0.05, 0.95))
    y_true = (rng.random(n) < p_pos).astype(np.int8)
    levels = draw(st.integers(1, 12))  # 1 level: every score tied
    score = rng.integers(0, levels, n).astype(np.float32) / max(levels - 1, 1)
    if draw(st.booleans()):  # scores that carry signal, as a model's do
        score = np.clip(score + 0.5 * y_true, 0, 1.5).astype(np.float32)
    y_pred = (score >= 0.5).astype(np.int8) if draw(st.booleans()) else (rng.random(n) < 0.5).astype(np.int8)
    return y_true, y_pred, score


@settings(max_examples=300, deadline=None)
@given(labelled())
def test_f1_equals_scikit_learn(case: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    y_true, y_pred, _ = case
    assert f1_score(y_true, y_pred) == pytest.approx(sk.f1_score(y_true, y_pred, zero_division=0.0), abs=1e-12)


@settings(max_examples=300, deadline=None)
@given(labelled())
def test_roc_auc_with_ties_equals_scikit_learn(case: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    y_true, _, score = case
    if y_true.min() == y_true.max():
        assert math.isnan(roc_auc(y_true, score)), "one class only: AUC is undefined"
        return
    assert roc_auc(y_true, score) == pytest.approx(sk.roc_auc_score(y_true, score), abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(labelled(), st.integers(2, 4))
def test_classification_metrics_equal_scikit_learn(case: tuple[np.ndarray, np.ndarray, np.ndarray], k: int) -> None:
    """Multi-class probabilities, one positive column: every figure as scikit-learn computes it."""
    y_true, _, _ = case
    n = len(y_true)
    rng = np.random.default_rng(n)
    labels = rng.integers(0, k, n)
    probs = rng.dirichlet(np.ones(k), n).round(1)  # rounded: ties in the positive column and in argmax
    positive = int(rng.integers(0, k))
    m = classification_metrics(labels, probs, positive, bootstrap=0)
    pred = probs.argmax(axis=1)
    yt, yp = labels == positive, pred == positive
    assert m["n"] == n and m["positives"] == int(yt.sum())
    assert m["f1"] == pytest.approx(sk.f1_score(yt, yp, zero_division=0.0), abs=1e-12)
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(labels, pred), abs=1e-12)
    assert m["precision"] == pytest.approx(sk.precision_score(yt, yp, zero_division=0.0), abs=1e-12)
    assert m["recall"] == pytest.approx(sk.recall_score(yt, yp, zero_division=0.0), abs=1e-12)
    if yt.all() or not yt.any():
        assert math.isnan(m["roc_auc"])
    else:
        assert m["roc_auc"] == pytest.approx(sk.roc_auc_score(yt, probs[:, positive]), abs=1e-12)


def _scipy_interval(
    statistic: Callable[[np.ndarray], float], n: int, samples: int, seed: int
) -> tuple[list[float], np.ndarray]:
    """scipy's paired percentile bootstrap over row indices, as joules draws them."""
    res = stats.bootstrap(
        (np.arange(n),),
        statistic,
        vectorized=False,
        paired=True,
        n_resamples=samples,
        method="percentile",
        confidence_level=0.95,
        rng=np.random.default_rng(seed),
    )
    return [float(res.confidence_interval.low), float(res.confidence_interval.high)], res.bootstrap_distribution


@settings(max_examples=25, deadline=None)
@given(labelled(min_size=2, max_size=80), st.integers(0, 1000))
def test_bootstrap_intervals_equal_scipy(case: tuple[np.ndarray, np.ndarray, np.ndarray], seed: int) -> None:
    y_true, y_pred, score = case
    samples = 200
    got = bootstrap_ci(y_true, y_pred, score, samples=samples, seed=seed)

    def f1(i: np.ndarray) -> float:
        return float(sk.f1_score(y_true[i], y_pred[i], zero_division=0.0))

    f1_ci, _ = _scipy_interval(f1, len(y_true), samples, seed)
    assert got["f1_ci95"] == pytest.approx(f1_ci, abs=1e-12)

    def auc(i: np.ndarray) -> float:
        yt = y_true[i]
        return float("nan") if yt.min() == yt.max() else float(sk.roc_auc_score(yt, score[i]))

    with warnings.catch_warnings():  # scipy warns when a resample's AUC is NaN; handled below
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        auc_ci, dist = _scipy_interval(auc, len(y_true), samples, seed)
    if np.isnan(dist).all():
        assert all(math.isnan(x) for x in got["roc_auc_ci95"])
    elif not np.isnan(dist).any():
        assert got["roc_auc_ci95"] == pytest.approx(auc_ci, abs=1e-12)
    else:  # joules' documented rule: resamples with one class only are left out of the AUC interval
        kept = dist[~np.isnan(dist)]
        assert got["roc_auc_ci95"] == pytest.approx(list(np.percentile(kept, [2.5, 97.5])), abs=1e-12)


def test_bootstrap_interval_brackets_the_estimate_on_a_real_sized_split() -> None:
    """1,000 rows of a fair model: the interval is narrow and holds the point estimate."""
    rng = np.random.default_rng(7)
    y = (rng.random(1000) < 0.15).astype(np.int8)
    score = np.clip(0.6 * y + rng.normal(0.2, 0.2, 1000), 0, 1)
    pred = (score >= 0.5).astype(np.int8)
    ci = bootstrap_ci(y, pred, score, samples=500, seed=0)
    f1, auc = f1_score(y, pred), roc_auc(y, score)
    assert ci["f1_ci95"][0] < f1 < ci["f1_ci95"][1] and ci["f1_ci95"][1] - ci["f1_ci95"][0] < 0.2
    assert ci["roc_auc_ci95"][0] < auc < ci["roc_auc_ci95"][1]


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 3000), st.integers(0, 3000), st.integers(0, 50))
def test_mcnemar_equals_scipy_binomtest(only_a: int, only_b: int, both: int) -> None:
    """Up to 6,000 discordant pairs: past 1,023 the old 2.0**n overflowed."""
    a = np.array([1] * only_a + [0] * only_b + [1] * both + [0] * both, dtype=bool)
    b = np.array([0] * only_a + [1] * only_b + [1] * both + [0] * both, dtype=bool)
    got = mcnemar(a, b)
    assert (got["only_a"], got["only_b"]) == (only_a, only_b)
    n = only_a + only_b
    want = 1.0 if n == 0 else stats.binomtest(min(only_a, only_b), n, 0.5).pvalue
    if want < 1e-250:  # scipy's binomtest underflows to 0 down there, where the log-space sum still has a value
        assert got["p_value"] < 1e-250
    else:
        assert got["p_value"] == pytest.approx(want, rel=1e-9)


def test_mcnemar_separates_a_real_difference_from_noise() -> None:
    assert mcnemar(np.array([1] * 30 + [0] * 2, bool), np.array([0] * 30 + [1] * 2, bool))["p_value"] < 1e-6
    assert mcnemar(np.array([1] * 5 + [0] * 5, bool), np.array([0] * 5 + [1] * 5, bool))["p_value"] == 1.0
