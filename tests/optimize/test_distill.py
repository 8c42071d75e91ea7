"""distill: a transformer student from the teacher's layers, and a bag-of-n-grams student."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from joules.bundle import Bundle, SplitDataset
from joules.errors import PassSkipped
from joules.optimize.passes import DistillNgram, DistillTransformer, PassContext
from joules.optimize.passes.distill import student_layers
from joules.optimize.passes.ngram import ngram_rows
from joules.quality import f1_score
from joules.runtime import Predictor
from tests.optimize.conftest import small


def test_student_layers_are_spread_and_end_at_the_top() -> None:
    assert student_layers(6, 3) == [1, 3, 5]
    assert student_layers(6, 2) == [2, 5]
    assert student_layers(12, 3) == [3, 7, 11]
    assert student_layers(2, 1) == [1]


def test_transformer_student_keeps_fewer_layers(two_layer_bundle: Bundle, tmp_path: Path) -> None:
    path = two_layer_bundle.file("dataset")
    assert path is not None
    ctx = PassContext(workdir=tmp_path, dataset=small(SplitDataset.read(path), 96, 64, 64))
    result = DistillTransformer(layers=1, epochs=1)(two_layer_bundle, tmp_path / "student", ctx)
    assert result.details["teacher_layers_kept"] == [1]
    probs = Predictor(result.bundle).predict_texts(["hello", "WIN a prize, call now"]).probabilities
    assert probs.shape == (2, 2)
    with pytest.raises(PassSkipped, match="not smaller"):
        DistillTransformer(layers=2)(two_layer_bundle, tmp_path / "same", ctx)


def test_ngram_student_beats_a_trivial_baseline(tiny_bundle: Bundle, spam_data: SplitDataset, tmp_path: Path) -> None:
    ctx = PassContext(workdir=tmp_path, dataset=small(spam_data, 600, 200, 300))
    result = DistillNgram(epochs=6, alpha=0.5)(tiny_bundle, tmp_path / "ngram", ctx)
    assert result.details["onnx_parity_max_abs"] <= 1e-4
    assert [i.name for i in result.bundle.spec.inputs] == ["input_ids", "attention_mask"]
    test = ctx.dataset["test"] if ctx.dataset else None
    assert test is not None
    y = np.asarray(test.label_indices(("ham", "spam")))
    probs = Predictor(result.bundle).predict_texts(test.texts).probabilities
    trivial = f1_score(y, np.zeros_like(y))  # always "ham", the majority class: F1 0
    assert f1_score(y, probs.argmax(1)) > trivial + 0.3


def test_ngram_rows_hash_pairs_past_the_vocabulary() -> None:
    rows = ngram_rows(np.array([101, 7, 102]), vocab=1000, buckets=50, n=2)
    assert rows[:3].tolist() == [101, 7, 102]
    assert rows[3:].tolist() == [1000 + (101 * 1000 + 7) % 50, 1000 + (7 * 1000 + 102) % 50]
    assert len(ngram_rows(np.array([5]), vocab=1000, buckets=50, n=3)) == 1


def test_ngram_student_needs_text(numeric_bundle: Bundle, ctx: PassContext, tmp_path: Path) -> None:
    with pytest.raises(PassSkipped, match="text"):
        DistillNgram()(numeric_bundle, tmp_path / "x", ctx)
    with pytest.raises(PassSkipped, match="text"):
        DistillTransformer()(numeric_bundle, tmp_path / "y", ctx)
