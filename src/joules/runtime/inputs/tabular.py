"""Rows of named features -> one float tensor in the model's feature order.

A row is a mapping of column name -> value, whatever the source: CSV cells
(strings), JSON numbers, Parquet values (numpy scalars, None), stream fields.
Columns the model does not name are ignored, so rows may carry ids and
extra columns in any order. A feature that is missing, not a number or not
finite is an InputError whose reason names the column, e.g.
``feature 'f3': 'abc' is not a number``.

Missing values (an absent column, None, an empty or blank cell) follow
``preprocess.missing``: ``error`` refuses the row, ``fill`` puts
``fill_value`` in their place, ``nan`` passes NaN to a model that handles it
(tree ensembles do); under ``nan`` a NaN cell is accepted too, infinities never.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from numbers import Real
from typing import Any

import numpy as np

from joules.errors import InputError

# Largest finite float32: a value past it would become inf once cast for the model.
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True, kw_only=True)
class TabularConverter:
    """Rows -> float vectors of ``len(features)`` in the model's order; batches -> ``{input: [N, F]}``."""

    features: tuple[str, ...]
    input: str
    dtype: str = "float32"
    missing: str = "error"  # error | fill | nan
    fill_value: float = 0.0

    @classmethod
    def from_spec(cls, pre: Any) -> TabularConverter:
        """From a bundle's ``Preprocess`` of kind ``tabular``."""
        return cls(
            features=tuple(pre.features),
            input=pre.input,
            dtype=pre.dtype,
            missing=pre.missing,
            fill_value=pre.fill_value if pre.fill_value is not None else 0.0,
        )

    @property
    def fields(self) -> tuple[str, ...]:
        """The request fields a row is read from."""
        return self.features

    def admit(self, row: Any) -> np.ndarray:
        """One row (a mapping of column name -> value) -> float32 vector [len(features)]."""
        if not isinstance(row, Mapping):
            raise InputError(
                f"a row must map feature names to values (features {_shown(self.features)}), got {type(row).__name__}"
            )
        out = np.empty(len(self.features), dtype=np.float32)
        for i, name in enumerate(self.features):
            out[i] = self._value(name, row.get(name))
        return out

    def batch(self, rows: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Admitted rows -> the model's feeds."""
        if not rows:
            raise InputError("empty batch: send at least one row")
        return {self.input: np.stack(rows).astype(self.dtype, copy=False)}

    def tensor(self, value: Any) -> np.ndarray:
        """A tensor given whole (V2's ``input``): [N, len(features)], columns in feature order, checked like rows."""
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise InputError(f"input {self.input!r} must be numbers [N, {len(self.features)}]: {e}") from None
        if arr.ndim == 1 and arr.shape[0] == len(self.features):
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != len(self.features) or arr.shape[0] == 0:
            raise InputError(
                f"input {self.input!r} must have shape [N, {len(self.features)}] "
                f"(one column per feature {_shown(self.features)}), got {list(arr.shape)}"
            )
        bad = ~np.isfinite(arr) | (np.abs(arr) > _FLOAT32_MAX)
        if self.missing == "nan":
            bad &= ~np.isnan(arr)
        if bad.any():
            r, c = (int(x) for x in np.argwhere(bad)[0])
            value = float(arr[r, c])
            raise InputError(f"feature {self.features[c]!r} (column {c}) of row {r}: {value!r} is not finite")
        return arr.astype(self.dtype)

    def _value(self, name: str, v: Any) -> float:
        if isinstance(v, str):
            text = v.strip()
            if not text:
                return self._missing(name)
            try:
                x = float(text)
            except ValueError:
                raise InputError(f"feature {name!r}: {_short(v)!r} is not a number") from None
        elif v is None:
            return self._missing(name)
        elif isinstance(v, bool | np.bool_):
            x = float(v)  # a boolean column (Parquet, JSON true/false) is a 0/1 feature
        elif isinstance(v, Real | Decimal):
            try:
                x = float(v)
            except (ValueError, OverflowError):  # Decimal("sNaN"); an int too large for a float
                raise InputError(f"feature {name!r}: {_short(v)!r} is not finite in float32") from None
        else:
            raise InputError(f"feature {name!r}: {_short(v)!r} ({type(v).__name__}) is not a number")
        if math.isnan(x):
            if self.missing == "nan":
                return x
            raise InputError(f"feature {name!r}: {_short(v)!r} is not finite (NaN)")
        if math.isinf(x) or abs(x) > _FLOAT32_MAX:
            raise InputError(f"feature {name!r}: {_short(v)!r} is not finite in float32")
        return x

    def _missing(self, name: str) -> float:
        if self.missing == "fill":
            return self.fill_value
        if self.missing == "nan":
            return math.nan
        raise InputError(f"feature {name!r} is missing")


def _short(v: Any, limit: int = 40) -> Any:
    if isinstance(v, str) and len(v) > limit:
        return v[:limit] + "..."
    return v


def _shown(names: Sequence[str], limit: int = 5) -> str:
    head = ", ".join(repr(n) for n in names[:limit])
    return f"[{head}{', ...' if len(names) > limit else ''}] ({len(names)})"
