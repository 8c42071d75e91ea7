"""Admission's rules and their one wording (the reasons every mode gives)."""

from __future__ import annotations

import numpy as np
import pytest

from joules.errors import InputError
from joules.runtime.admission import TensorInput, TensorKind, admit_text, field_of


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "missing field 'text'"),
        (5, "field 'text' must be a string, got int"),
        ("", "field 'text' is empty or only whitespace"),
        ("  \n\t", "field 'text' is empty or only whitespace"),
        (b"  \n", "field 'text' is empty or only whitespace"),
        (b"a\xff", "field 'text' is not valid UTF-8 text"),
        ("a\udc80", "field 'text' is not valid UTF-8 text"),
        (b"x" * 101, "field 'text' is 101 bytes, over the limit of 100 (max_text_bytes)"),
        ("é" * 51, "field 'text' is 102 bytes, over the limit of 100 (max_text_bytes)"),
    ],
)
def test_text_rules(value: object, reason: str) -> None:
    with pytest.raises(InputError) as e:
        admit_text(field_of({"text": value}, "text"), "text", 100)
    assert str(e.value) == reason


def test_good_texts_pass_as_str() -> None:
    assert admit_text(b"hello", "text", 100) == "hello"
    assert admit_text("héllo", "text", 100) == "héllo"
    assert admit_text("x" * 100, "text", 100) == "x" * 100, "the limit is inclusive"


KIND = TensorKind(
    inputs=(
        TensorInput(name="x", dtype=np.float32, row_shape=(3,)),
        TensorInput(name="n", dtype=np.int32, row_shape=()),
    )
)


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"n": 1}, "missing field 'x'"),
        ({"x": [1, 2], "n": 1}, "field 'x' has shape [2]; the model takes [3] per row"),
        ({"x": [[1, 2], [3]], "n": 1}, "field 'x' has shape [2, 2]; the model takes [3] per row"),
        ({"x": [1, "a", 3], "n": 1}, "field 'x' must hold numbers, got str"),
        ({"x": [1, True, 3], "n": 1}, "field 'x' must hold numbers, got bool"),
        ({"x": "not json", "n": 1}, "field 'x' must hold numbers (a JSON array)"),
        ({"x": [1, float("nan"), 3], "n": 1}, "field 'x' holds a value that is not finite"),
        (
            {"x": [1, 1e39, 3], "n": 1},
            "field 'x' holds a value that is not finite (NaN, infinity, or out of the float32",
        ),
        ({"x": [1, 2, 3], "n": 2**40}, "field 'n' holds a value outside the range of int32"),
        ({"x": [1, 2, 3], "n": 1.5}, "field 'n' must hold whole numbers, got float"),
    ],
)
def test_tensor_rules(row: dict[str, object], reason: str) -> None:
    with pytest.raises(InputError) as e:
        KIND.admit(row)
    assert str(e.value).startswith(reason), str(e.value)


def test_tensor_rows_convert_to_the_model_dtype() -> None:
    got = KIND.admit({"x": "[1, 2.5, 3]", "n": 7})  # JSON text, as a CSV cell or a Redis field holds it
    assert got["x"].dtype == np.float32 and got["x"].tolist() == [1.0, 2.5, 3.0]
    assert got["n"].dtype == np.int32 and got["n"].item() == 7
    feeds = KIND.feeds([got, KIND.admit({"x": np.ones(3), "n": 0})])
    assert feeds["x"].shape == (2, 3) and feeds["n"].shape == (2,)
