"""joules.yaml: the input kinds' settings (tabular, image, email), their defaults and their checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from joules.bundle import Bundle, BundleSpec, Preprocess
from joules.bundle.inputs import DEFAULT_EMAIL_MAX_BYTES, DEFAULT_MAX_PIXELS
from joules.errors import BundleError
from tests.helpers import numeric_onnx

TABULAR_YAML = """task: classification
preprocess:
  kind: tabular
  input: X
  features: [f0, f1, f2, f3]
postprocess: {output: logits, labels: [a, b, c], activation: softmax}
"""


def test_tabular_spec_as_written_by_hand() -> None:
    spec = BundleSpec.from_dict({"name": "t", **yaml.safe_load(TABULAR_YAML)})
    pre = spec.preprocess
    assert (pre.kind, pre.input, pre.features, pre.dtype, pre.missing) == (
        "tabular",
        "X",
        ["f0", "f1", "f2", "f3"],
        "float32",
        "error",
    )
    assert not pre.tokenized
    # Only the tabular settings are written back: no tokenizer in a tabular bundle's joules.yaml.
    assert pre.to_dict() == {
        "kind": "tabular",
        "input": "X",
        "dtype": "float32",
        "features": ["f0", "f1", "f2", "f3"],
        "missing": "error",
    }


def test_text_spec_is_written_as_before() -> None:
    assert Preprocess().to_dict() == {
        "kind": "text",
        "tokenizer": "tokenizer.json",
        "max_length": 128,
        "text_field": "text",
    }


def test_image_defaults_and_shorthands() -> None:
    pre = Preprocess(kind="image", input="image", size=32, mean=0.5)
    assert pre.size == [32, 32]
    assert (pre.layout, pre.channels, pre.resize, pre.max_pixels) == ("NCHW", 3, "crop", DEFAULT_MAX_PIXELS)
    assert pre.mean == [0.5, 0.5, 0.5] and pre.std == [1.0, 1.0, 1.0]
    assert Preprocess(**pre.to_dict()) == pre  # resolved settings read back unchanged


def test_email_defaults() -> None:
    pre = Preprocess(kind="email", max_length=256)
    assert pre.tokenized
    assert pre.reads == ["from", "subject", "body"] and pre.parts == ["text/plain", "text/html"]
    assert pre.max_bytes == DEFAULT_EMAIL_MAX_BYTES
    assert "text_field" not in pre.to_dict() and pre.to_dict()["tokenizer"] == "tokenizer.json"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"kind": "pictures"}, "preprocess.kind 'pictures' is not one of"),
        ({"kind": "text", "features": ["a"]}, "preprocess.features applies to kind tabular, not 'text'"),
        ({"kind": "tabular", "input": "X", "features": ["a"], "size": 8}, "preprocess.size applies to kind image"),
        ({"kind": "tabular", "input": "X"}, "preprocess.features is required"),
        ({"kind": "tabular", "features": ["a"]}, "preprocess.input is required for kind tabular"),
        ({"kind": "tabular", "input": "X", "features": ["a", "a"]}, "names \\['a'\\] more than once"),
        ({"kind": "tabular", "input": "X", "features": ["a", 3]}, "must be non-empty strings"),
        ({"kind": "tabular", "input": "X", "features": ["a"], "missing": "zero"}, "preprocess.missing 'zero'"),
        ({"kind": "tabular", "input": "X", "features": ["a"], "fill_value": 1}, "applies to missing: fill"),
        (
            {"kind": "tabular", "input": "X", "features": ["a"], "missing": "fill", "fill_value": float("nan")},
            "fill_value must be a finite number",
        ),
        ({"kind": "tabular", "input": "X", "features": ["a"], "dtype": "int64"}, "preprocess.dtype 'int64'"),
        ({"kind": "image", "input": "i"}, "preprocess.size is required"),
        ({"kind": "image", "input": "i", "size": [8, 8, 8]}, "must be a number or \\[height, width\\]"),
        ({"kind": "image", "input": "i", "size": 0}, "preprocess.size must be a whole number >= 1"),
        ({"kind": "image", "input": "i", "size": 8, "layout": "CHW"}, "preprocess.layout 'CHW'"),
        ({"kind": "image", "input": "i", "size": 8, "channels": 4}, "channels must be 1"),
        ({"kind": "image", "input": "i", "size": 8, "mean": [0.1, 0.2]}, "one number or one per channel"),
        ({"kind": "image", "input": "i", "size": 8, "std": 0}, "std values must be > 0"),
        ({"kind": "image", "input": "i", "size": 8, "max_pixels": 0}, "max_pixels must be a whole number"),
        ({"kind": "image", "input": "i", "size": 8, "resize": "pad"}, "preprocess.resize 'pad'"),
        ({"kind": "email", "reads": ["headers"]}, "preprocess.reads must be a non-empty list"),
        ({"kind": "email", "parts": []}, "preprocess.parts must be a non-empty list"),
        ({"kind": "email", "max_bytes": -1}, "preprocess.max_bytes must be a whole number"),
    ],
)
def test_bad_settings_are_refused(settings: dict[str, object], message: str) -> None:
    with pytest.raises(BundleError, match=message):
        Preprocess(**settings)  # type: ignore[arg-type]


def test_text_classification_takes_email_but_not_tabular() -> None:
    post = {"output": "logits", "labels": ["ham", "spam"]}
    spec = BundleSpec.from_dict(
        {"name": "m", "task": "text-classification", "preprocess": {"kind": "email"}, "postprocess": post}
    )
    assert spec.preprocess.kind == "email"
    with pytest.raises(BundleError, match="feeds its tokenizer"):
        BundleSpec.from_dict(
            {
                "name": "m",
                "task": "text-classification",
                "preprocess": {"kind": "tabular", "input": "X", "features": ["a"]},
                "postprocess": post,
            }
        )


def _tabular_bundle(tmp_path: Path, features: int, pre: dict[str, object]) -> Path:
    d = tmp_path / "b"
    d.mkdir()
    numeric_onnx(d / "model.onnx", features=features)
    spec = BundleSpec.from_dict(
        {
            "name": "t",
            "task": "classification",
            "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", features]}],
            "preprocess": pre,
            "postprocess": {"output": "logits", "labels": ["a", "b", "c"]},
        }
    )
    spec.write(d)
    return d


def test_bundle_checks_the_graph_input_against_the_spec(tmp_path: Path) -> None:
    ok = _tabular_bundle(tmp_path, 4, {"kind": "tabular", "input": "x", "features": ["a", "b", "c", "d"]})
    b = Bundle.load(ok)
    assert b.spec.preprocess.features == ["a", "b", "c", "d"]
    assert BundleSpec.read(ok) == b.spec  # written and read back the same


@pytest.mark.parametrize(
    ("pre", "message"),
    [
        ({"kind": "tabular", "input": "X", "features": ["a", "b", "c", "d"]}, "preprocess.input is 'X' but the graph"),
        ({"kind": "tabular", "input": "x", "features": ["a", "b", "c"]}, "makes rows of shape \\[N, 3\\]"),
        ({"kind": "image", "input": "x", "size": 2}, "makes rows of shape \\[N, 3, 2, 2\\]"),
    ],
)
def test_bundle_refuses_a_graph_that_does_not_fit(tmp_path: Path, pre: dict[str, object], message: str) -> None:
    d = _tabular_bundle(tmp_path, 4, pre)
    with pytest.raises(BundleError, match=message):
        Bundle.load(d)
