"""Tabular converter: rows by column name, the missing-value policies, reasons that name the column."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest

from joules.bundle import Preprocess
from joules.errors import InputError
from joules.runtime.inputs import TabularConverter

FEATURES = ("f0", "f1", "f2", "f3")


def conv(**kw: object) -> TabularConverter:
    return TabularConverter(features=FEATURES, input="X", **kw)  # type: ignore[arg-type]


def test_row_in_feature_order_whatever_the_column_order() -> None:
    row = {"id": "r1", "f3": "4", "f1": 2, "f0": " 1.5 ", "f2": np.float64(3.0), "extra": "ignored"}
    out = conv().admit(row)
    assert out.dtype == np.float32
    assert out.tolist() == [1.5, 2.0, 3.0, 4.0]


def test_values_of_every_source() -> None:
    row = {"f0": np.int64(7), "f1": True, "f2": Decimal("2.5"), "f3": "-1e3"}
    assert conv().admit(row).tolist() == [7.0, 1.0, 2.5, -1000.0]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("abc", "feature 'f3': 'abc' is not a number"),
        ([1, 2], "feature 'f3': [1, 2] (list) is not a number"),
        ("inf", "feature 'f3': 'inf' is not finite in float32"),
        (float("-inf"), "feature 'f3': -inf is not finite in float32"),
        (1e39, "feature 'f3': 1e+39 is not finite in float32"),  # finite in float64, inf once cast
        ("nan", "feature 'f3': 'nan' is not finite (NaN)"),
        (Decimal("sNaN"), "feature 'f3': Decimal('sNaN') is not finite in float32"),
    ],
)
def test_bad_cells_name_the_column(value: object, reason: str) -> None:
    with pytest.raises(InputError) as e:
        conv().admit({"f0": 1, "f1": 2, "f2": 3, "f3": value})
    assert str(e.value) == reason


@pytest.mark.parametrize("missing", [None, "", "   ", "absent"])
def test_missing_policies(missing: object) -> None:
    row: dict[str, object] = {"f0": 1, "f1": 2, "f2": 3}
    if missing != "absent":
        row["f3"] = missing
    with pytest.raises(InputError, match=r"^feature 'f3' is missing$"):
        conv().admit(row)
    assert conv(missing="fill", fill_value=-1.0).admit(row).tolist() == [1, 2, 3, -1]
    out = conv(missing="nan").admit(row)
    assert out[:3].tolist() == [1, 2, 3] and np.isnan(out[3])


def test_nan_policy_accepts_nan_but_never_infinity() -> None:
    nan_ok = conv(missing="nan")
    assert np.isnan(nan_ok.admit({"f0": "NaN", "f1": 0, "f2": 0, "f3": 0})[0])
    with pytest.raises(InputError, match="not finite"):
        nan_ok.admit({"f0": "inf", "f1": 0, "f2": 0, "f3": 0})


def test_not_a_mapping() -> None:
    with pytest.raises(InputError, match="a row must map feature names to values"):
        conv().admit([1, 2, 3, 4])


def test_batch_and_dtype() -> None:
    c = conv(dtype="float64")
    feeds = c.batch([c.admit({f: i for i, f in enumerate(FEATURES)}), c.admit(dict.fromkeys(FEATURES, 1))])
    assert list(feeds) == ["X"]
    assert feeds["X"].dtype == np.float64 and feeds["X"].shape == (2, 4)
    with pytest.raises(InputError, match="empty batch"):
        c.batch([])


def test_tensor_in_feature_order() -> None:
    c = conv()
    x = c.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert x.dtype == np.float32 and x.shape == (2, 4)
    assert c.tensor([1, 2, 3, 4]).shape == (1, 4)
    with pytest.raises(InputError, match=r"must have shape \[N, 4\]"):
        c.tensor([[1, 2, 3]])
    with pytest.raises(InputError, match=r"must be numbers"):
        c.tensor([["a", "b", "c", "d"]])
    with pytest.raises(InputError) as e:
        c.tensor([[1, 2, 3, 4], [1, 2, float("inf"), 4]])
    assert str(e.value) == "feature 'f2' (column 2) of row 1: inf is not finite"
    with pytest.raises(InputError, match=r"feature 'f0' .* not finite"):
        c.tensor([[1e39, 2, 3, 4]])
    assert np.isnan(conv(missing="nan").tensor([[np.nan, 2, 3, 4]])[0, 0])


def test_from_spec() -> None:
    pre = Preprocess(kind="tabular", input="X", features=list(FEATURES), missing="fill", fill_value=5)
    c = TabularConverter.from_spec(pre)
    assert c.features == FEATURES and c.fill_value == 5.0 and c.fields == FEATURES
    assert c.admit({"f0": 1, "f1": 2, "f2": 3}).tolist() == [1, 2, 3, 5]
