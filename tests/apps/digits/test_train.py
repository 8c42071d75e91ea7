"""``joules train digits``: trained here, exported, measured through the bundle's image converter and ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from joules.apps.digits.train import LABELS, render, split_indices, train_digits
from joules.registry import Registry
from joules.runtime import Predictor
from joules.runtime.inputs import ImageConverter
from joules.settings import Settings
from tests.helpers import run_joules


@pytest.fixture(scope="module")
def digits_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("digits-home")
    train_digits(registry=Registry(Settings(home=home)), epochs=4, variants=1)
    return home


def test_split_is_stratified_and_disjoint() -> None:
    y = np.repeat(np.arange(10), 50)
    parts = split_indices(y, seed=0)
    assert [len(parts[k]) for k in ("train", "validation", "test")] == [300, 100, 100]
    assert len(set(np.concatenate(list(parts.values())).tolist())) == 500
    assert np.bincount(y[parts["test"]]).tolist() == [10] * 10


def test_bundle_is_an_image_model_that_reads_files_of_any_size(digits_home: Path) -> None:
    from sklearn.datasets import load_digits

    mv = Registry(Settings(home=digits_home)).get("digits")
    assert mv.stage == "production" and list(mv.labels) == LABELS
    bundle = Registry(Settings(home=digits_home)).load("digits")
    pre = bundle.spec.preprocess
    assert (pre.kind, pre.size, pre.channels, pre.layout) == ("image", [8, 8], 1, "NCHW")
    test = mv.metrics["test"]
    assert test["rendering"] == "png_32_nearest" and test["n"] == 360
    assert test["accuracy"] >= 0.9  # four epochs already; the default 30 reach about 0.98
    assert set(test["by_rendering"]) >= {"png_8", "png_100_bilinear", "jpeg_64_bilinear", "png_48_inverted"}
    assert mv.lineage[0]["onnx_parity_max_abs"] <= 1e-4

    # Files the model never saw, as a user would send them: converter -> ONNX Runtime.
    d = load_digits()
    conv = ImageConverter.from_spec(pre)
    predictor = Predictor(bundle)
    idx = np.arange(0, 1797, 37)
    files = [render(d.images[i], side, "NEAREST") for i, side in zip(idx, [20, 40, 77] * 20, strict=False)]
    feeds = conv.batch([conv.admit(f) for f in files])
    got = predictor.predict_tensors(feeds).labels
    assert np.mean([g == str(d.target[i]) for g, i in zip(got, idx, strict=True)]) >= 0.85


def test_cli_trains_and_refuses_foreign_flags(tmp_path: Path) -> None:
    bad = run_joules("train", "digits", "--data", "x.tsv", home=tmp_path)
    assert bad.returncode == 2 and "takes no --data" in bad.stderr and "Traceback" not in bad.stderr
    out = run_joules("train", "digits", "--epochs", "1", "--json", home=tmp_path, check=True)
    summary = json.loads(out.stdout)
    assert summary["name"] == "digits" and summary["version"] == 1
    assert 0 <= summary["metrics"]["test"]["accuracy"] <= 1
