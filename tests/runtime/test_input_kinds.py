"""The input kinds tabular and image in the Predictor: fields, rows by name or as arrays, refusals; the
text view of an e-mail bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from joules.bundle import Bundle, Preprocess
from joules.errors import BundleError, InputError
from joules.runtime import Predictor
from joules.runtime.admission import ImageKind, TabularKind, tensor_fields, text_view
from tests.runtime.inputs.samples import png_bomb
from tests.serve.inputs_models import FEATURES, img_bundle, png, tab_bundle, tab_expected


def test_tabular_rows_by_name_or_as_the_graph_input(tmp_path: Path) -> None:
    w, b = tab_bundle(tmp_path / "tab")
    p = Predictor(Bundle.load(tmp_path / "tab"))
    assert isinstance(p.kind, TabularKind) and p.fields == tuple(FEATURES) and tensor_fields(p.kind) == ("x",)
    x = np.array([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, 0.0, 2.0]], dtype=np.float32)
    want = tab_expected(w, b, x)
    by_name = p.predict_rows([{f: str(v) for f, v in zip(FEATURES, row, strict=True)} for row in x])
    assert [r.label for r in by_name] == want  # type: ignore[union-attr]
    assert p.predict_tensors({"x": x}).labels == want
    assert p.predict_tensors({f: x[:, i] for i, f in enumerate(FEATURES)}).labels == want
    refused = p.predict_rows([{"a": 1, "b": 2, "c": "1e39", "d": 0}, {"x": np.array([1.0, np.inf, 0, 0])}])
    assert refused[0].error == "feature 'c': '1e39' is not finite in float32"  # type: ignore[union-attr]
    assert "feature 'b' (column 1) of row 0: inf is not finite" in str(refused[1].error)  # type: ignore[union-attr]
    with pytest.raises(InputError, match="field 'x' has shape"):
        p.admit({"x": np.zeros((2, 4))})


def test_image_rows_as_bytes_base64_or_arrays(tmp_path: Path) -> None:
    import base64

    img_bundle(tmp_path / "img")
    p = Predictor(Bundle.load(tmp_path / "img"))
    assert isinstance(p.kind, ImageKind) and p.fields == ("image",)
    rows = [{"image": png(250)}, {"image": base64.b64encode(png(5)).decode()}, {"image": png_bomb(30_000, 30_000)}]
    out = p.predict_rows(rows)
    assert [r.label for r in out[:2]] == ["light", "dark"]  # type: ignore[union-attr]
    assert "over the limit of 25,000,000" in str(out[2].error)  # type: ignore[union-attr]
    assert p.predict_tensors({"image": np.ones((1, 1, 8, 8), dtype=np.float32)}).labels == ["light"]
    with pytest.raises(InputError, match=r"field 'image' has shape \[8, 8\]"):
        p.admit({"image": np.ones((8, 8), dtype=np.float32)})


def test_preprocess_input_must_be_the_graph_input(tmp_path: Path) -> None:
    tab_bundle(tmp_path / "tab")
    bundle = Bundle.load(tmp_path / "tab")
    wrong = Preprocess(kind="tabular", input="X", features=FEATURES)
    bundle.with_spec(preprocess=wrong).save()
    with pytest.raises(BundleError, match=r"preprocess\.input is 'X' but the graph takes \['x'\]"):
        Predictor(Bundle.load(tmp_path / "tab"))


def test_text_view_of_an_email_bundle(tmp_path: Path) -> None:
    tab_bundle(tmp_path / "tab")
    tab = Bundle.load(tmp_path / "tab")
    assert text_view(tab) is tab
    mail = tab.with_spec(preprocess=Preprocess(kind="email", tokenizer="tokenizer.json", max_length=64))
    view = text_view(mail)
    assert (view.spec.preprocess.kind, view.spec.preprocess.max_length, view.path) == ("text", 64, mail.path)
