"""Fixtures for the optimization tests: small contexts, a tensor model, a 2-layer BERT bundle."""

from __future__ import annotations

from pathlib import Path

import pytest

from joules.bundle import Bundle, Split, SplitDataset
from joules.optimize.passes.base import PassContext
from tests.conftest import make_tiny_hf_dir
from tests.helpers import numeric_onnx


def small(data: SplitDataset, train: int = 160, validation: int = 120, test: int = 120) -> SplitDataset:
    """The first rows of each split (the spam splits are shuffled already)."""
    sizes = {"train": train, "validation": validation, "test": test}
    return SplitDataset({k: Split(v.texts[: sizes[k]], v.labels[: sizes[k]]) for k, v in data.splits.items()})


@pytest.fixture(scope="session")
def spam_data(tiny_bundle_dir: Path) -> SplitDataset:
    path = Bundle.load(tiny_bundle_dir).file("dataset")
    assert path is not None
    return SplitDataset.read(path)


@pytest.fixture()
def ctx(tmp_path: Path, spam_data: SplitDataset) -> PassContext:
    return PassContext(workdir=tmp_path, dataset=small(spam_data))


@pytest.fixture()
def tiny_bundle(tiny_bundle_dir: Path) -> Bundle:
    return Bundle.load(tiny_bundle_dir)


@pytest.fixture()
def numeric_bundle(tmp_path: Path) -> Bundle:
    """A linear classifier over 4 float features: not a text model, not a transformer."""
    from joules.imports import prepare_import

    numeric_onnx(tmp_path / "linear.onnx", features=16, classes=3)
    (tmp_path / "spec.yaml").write_text(
        "task: classification\npreprocess: {kind: tensors}\npostprocess: {output: logits, labels: [a, b, c]}\n"
    )
    work = tmp_path / "import"
    work.mkdir()
    return prepare_import(tmp_path / "linear.onnx", work, spec_file=tmp_path / "spec.yaml")


@pytest.fixture(scope="session")
def two_layer_bundle(tmp_path_factory: pytest.TempPathFactory, spam_data: SplitDataset) -> Bundle:
    """A 2-layer, 4-head tiny BERT (random weights) as a trainable bundle with the spam splits."""
    from joules.train import load_sequence_classifier, write_text_bundle

    root = tmp_path_factory.mktemp("two-layer")
    hf = make_tiny_hf_dir(root / "hf", layers=2, heads=4, hidden=32)
    model = load_sequence_classifier(hf)
    bundle, _ = write_text_bundle(
        root / "bundle",
        model,
        hf / "tokenizer.json",
        name="two",
        labels=["ham", "spam"],
        dataset=small(spam_data, 400, 200, 200),
        positive_label="spam",
        rules={"rules": [{"when": "spam >= 0.5", "action": "flag"}], "default": "deliver"},
    )
    return bundle
