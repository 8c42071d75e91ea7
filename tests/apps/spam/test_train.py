"""The tiny spam model every serving test uses, trained through `train_spam`: it must have learnt
something, or tests that compare its outputs across modes compare noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from joules.apps.spam.dataset import LABELS
from joules.bundle import Bundle, SplitDataset
from joules.runtime import Predictor
from tests.helpers import assert_beats_chance


def test_the_tiny_model_beats_chance_on_the_held_out_test_split(tiny_bundle_dir: Path) -> None:
    bundle = Bundle.load(tiny_bundle_dir)
    dataset = bundle.file("dataset")
    assert dataset is not None, "train_spam saves its split in the bundle"
    test = SplitDataset.read(dataset)["test"]
    predicted = Predictor(bundle).predict_texts(test.texts, record=False).labels
    y_true = np.array(test.labels) == "spam"
    assert_beats_chance(y_true, np.array(predicted) == "spam", "tiny spam model on its test split")
    assert set(predicted) <= set(LABELS)
