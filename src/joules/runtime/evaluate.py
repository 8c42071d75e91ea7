"""Measure a Predictor on a labelled split."""

from __future__ import annotations

from typing import Any

import numpy as np

from joules.bundle import Split
from joules.quality import classification_metrics
from joules.runtime.predictor import Predictor


def evaluate(predictor: Predictor, split: Split, *, bootstrap: int = 1000) -> dict[str, Any]:
    """Quality of ``predictor`` on ``split`` (positive class from the bundle), fractions in [0, 1]."""
    labels = predictor.labels
    y = np.asarray(split.label_indices(labels))
    probs = predictor.predict_texts(split.texts, record=False).probabilities
    positive = labels.index(predictor.spec.postprocess.positive)
    return classification_metrics(y, probs, positive, bootstrap=bootstrap)
