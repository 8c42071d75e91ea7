"""Admission: the one set of input rules every serving mode applies.

Online (/v1 and V2), batch and stream differ in where a row comes from; what
makes a row acceptable is decided here, once, with one reason string per rule.
Each mode reports the reason its own way (a 400 whose message contains it, an
error row ``{"row", "id", "reason"}``, a dead letter with it) but never
rewords it, so a user sees the same words whichever way they send a row.

The plug-in point is ``InputKind``, chosen per bundle by
``preprocess.kind`` in joules.yaml (``kind_for``):

- ``fields``: the request fields (batch columns, stream message fields) one
  row is made of, e.g. ``("text",)`` or a tensor model's input names;
- ``admit(row)``: one row's raw fields (a mapping of field name to what the
  carrier holds: ``str``, ``bytes``, JSON numbers and lists, numpy arrays)
  -> the converted value the model path takes; raises ``InputError`` whose
  message is the reason, built with the ``reasons`` below;
- ``encode(values)``: converted values -> one unit per row, done once per
  request set (texts are tokenized here, and only here);
- ``work(unit)``: how much work a row is (tokens; 1 for a tensor row), which
  plans model calls and shares their cost;
- ``feeds(units)``: units -> the model's input arrays for one call (padded,
  stacked);
- ``warmup()``: a few converted values that exercise the model at load.

A new kind (e-mail, tabular, image, ...) is one class with these methods and
one line in ``kind_for`` (plus its name in ``bundle.spec.Preprocess``); every
mode reaches it without change, because every mode goes through
``Predictor.admit`` / ``Predictor.predict_values``.

What ``admit`` receives, by carrier (a kind must take each):

- /v1 JSON: the instance's JSON values (str, int, float, bool, lists, None);
- V2: a BYTES input's element as ``str`` (JSON data) or ``bytes`` (binary
  data); a numeric input's row as a numpy array (float64 from JSON data, the
  declared datatype from binary data);
- batch: CSV cells as ``str`` (lone surrogates where the file was not UTF-8),
  JSONL values as JSON values, Parquet values as Python values (``bytes`` for
  binary columns); a missing value is ``None`` or absent;
- stream: JSONL values as JSON values, Redis fields as ``bytes``.

``field_of`` refuses an absent or null field; ``admit_text`` holds the text
rules (size, UTF-8, blank) for any kind that ends in text; the reasons are in
``runtime/reasons.py``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from tokenizers import Encoding

from joules.bundle import Bundle
from joules.errors import BundleError, InputError
from joules.runtime.limits import MAX_TEXT_BYTES
from joules.runtime.preprocess import TextPreprocessor
from joules.runtime.reasons import (
    blank,
    invalid_utf8,
    missing,
    not_finite,
    not_numbers,
    not_text,
    out_of_range,
    too_long,
    wrong_shape,
)

MAX_NESTING = 8  # how deep a tensor field's lists may nest

__all__ = ["InputKind", "TensorInput", "TensorKind", "TextKind", "admit_text", "field_of", "invalid_utf8", "kind_for"]


# -- the plug-in point ----------------------------------------------------------------------------


class InputKind(Protocol):
    """How one bundle's rows are admitted and turned into model inputs (see the module docstring)."""

    @property
    def name(self) -> str: ...

    @property
    def fields(self) -> tuple[str, ...]: ...

    def admit(self, row: Mapping[str, Any]) -> Any: ...

    def encode(self, values: Sequence[Any]) -> list[Any]: ...

    def work(self, unit: Any) -> int: ...

    def feeds(self, units: Sequence[Any]) -> dict[str, np.ndarray]: ...

    def warmup(self) -> list[Any]: ...


_MISSING = object()


def field_of(row: Mapping[str, Any], name: str) -> Any:
    """``row[name]``, or InputError(missing) when the row has no such field (or it is null)."""
    value = row.get(name, _MISSING) if isinstance(row, Mapping) else _MISSING
    if value is _MISSING or value is None:
        raise InputError(missing(name))
    return value


# -- text -------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, kw_only=True)
class TextKind:
    """One text field, tokenized (after a cut that keeps its first tokens) and padded per call."""

    preprocessor: TextPreprocessor
    dtypes: Mapping[str, Any]
    field: str = "text"
    max_bytes: int = MAX_TEXT_BYTES
    name: str = "text"

    @property
    def fields(self) -> tuple[str, ...]:
        return (self.field,)

    def admit(self, row: Mapping[str, Any]) -> str:
        return admit_text(field_of(row, self.field), self.field, self.max_bytes)

    def encode(self, values: Sequence[str]) -> list[Encoding]:
        return self.preprocessor.encode(values)

    def work(self, unit: Encoding) -> int:
        return len(unit.ids)

    def feeds(self, units: Sequence[Encoding]) -> dict[str, np.ndarray]:
        return self.preprocessor.batch(units, dict(self.dtypes))

    def warmup(self) -> list[str]:
        return ["warm up the session", "a second, somewhat longer text to warm up a batch of two"]


def admit_text(value: Any, field: str, max_bytes: int) -> str:
    """A text as the model path takes it, or InputError with the reason.

    Bytes (a Redis field, a V2 binary element) are checked against the size limit before
    decoding, so a huge value costs nothing, then decoded as strict UTF-8. A ``str`` must
    encode back to UTF-8: a lone surrogate (a JSON ``\\udc80`` escape, or bytes a CSV reader
    kept with ``surrogateescape``) is not text.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        if len(raw) > max_bytes:
            raise InputError(too_long(field, len(raw), max_bytes))
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(invalid_utf8(field)) from None
    elif isinstance(value, str):
        if len(value) * 4 > max_bytes or not value.isascii():
            try:
                size = len(value.encode("utf-8"))
            except UnicodeEncodeError:
                raise InputError(invalid_utf8(field)) from None
            if size > max_bytes:
                raise InputError(too_long(field, size, max_bytes))
        text = value
    else:
        raise InputError(not_text(field, value))
    if not text.strip():
        raise InputError(blank(field))
    return text


# -- tensors ------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TensorInput:
    """One model input as a row sees it: its dtype and its shape without the row dimension."""

    name: str
    dtype: Any  # a numpy dtype
    row_shape: tuple[int, ...]  # -1 for a dimension of any size


@dataclass(frozen=True, eq=False, kw_only=True)
class TensorKind:
    """The row carries the model's inputs: numbers (JSON lists, arrays, or JSON text in a string)."""

    inputs: tuple[TensorInput, ...]
    allow_non_finite: bool = False
    name: str = "tensors"

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    def admit(self, row: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return {t.name: self._admit_one(t, field_of(row, t.name)) for t in self.inputs}

    def _admit_one(self, t: TensorInput, value: Any) -> np.ndarray:
        dtype = np.dtype(t.dtype)
        if isinstance(value, (str, bytes, bytearray)):
            # A text carrier (a CSV cell, a Redis field) holds the numbers as JSON.
            try:
                value = json.loads(value)
            except (ValueError, UnicodeDecodeError):
                raise InputError(not_numbers(t.name, "numbers (a JSON array)", value)) from None
        want_bool = dtype.kind == "b"
        if isinstance(value, np.ndarray):
            ok = value.dtype.kind == "b" if want_bool else value.dtype.kind in "iuf"
            if not ok:
                raise InputError(not_numbers(t.name, _what(want_bool), value))
            source = value
        else:
            _check_leaves(value, t.name, want_bool, 0)
            try:
                source = np.asarray(value, dtype=np.bool_ if want_bool else np.float64)
            except (ValueError, OverflowError):
                # ragged lists, or an integer beyond float64
                raise InputError(wrong_shape(t.name, _ragged_shape(value), t.row_shape)) from None
        shape_ok = source.ndim == len(t.row_shape) and all(
            w < 0 or g == w for g, w in zip(source.shape, t.row_shape, strict=True)
        )
        if not shape_ok:
            raise InputError(wrong_shape(t.name, source.shape, t.row_shape))
        return self._convert(t, source, dtype)

    def _convert(self, t: TensorInput, source: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
        if dtype.kind == "f":
            with np.errstate(over="ignore", invalid="ignore"):
                arr = source.astype(dtype)  # 1e39 in float32 is inf: an overflow is not finite either
            if not self.allow_non_finite and not np.isfinite(arr).all():
                raise InputError(not_finite(t.name, dtype.name))
            return arr
        if dtype.kind in "iu":
            if source.dtype.kind == "f":
                bad = ~np.isfinite(source) | (source != np.floor(source))
                if bad.any():
                    raise InputError(not_numbers(t.name, "whole numbers", source[bad].ravel()[0].item()))
            info = np.iinfo(dtype)
            if source.size and (source.min() < info.min or source.max() > info.max):
                raise InputError(out_of_range(t.name, dtype.name))
            return source.astype(dtype)
        return source.astype(dtype)

    def encode(self, values: Sequence[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        return list(values)

    def work(self, unit: dict[str, np.ndarray]) -> int:
        return 1

    def feeds(self, units: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return {t.name: np.stack([u[t.name] for u in units]) for t in self.inputs}

    def warmup(self) -> list[dict[str, np.ndarray]]:
        row = {t.name: np.zeros([d if d > 0 else 1 for d in t.row_shape], dtype=t.dtype) for t in self.inputs}
        return [row]


def _what(want_bool: bool) -> str:
    return "true/false values" if want_bool else "numbers"


def _check_leaves(value: Any, field: str, want_bool: bool, depth: int) -> None:
    if isinstance(value, list):
        if depth >= MAX_NESTING:
            raise InputError(f"field {field!r} is nested more than {MAX_NESTING} lists deep")
        for x in value:
            _check_leaves(x, field, want_bool, depth + 1)
        return
    if want_bool:
        ok = isinstance(value, (bool, np.bool_))
    else:
        ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
        if ok and isinstance(value, int) and not -(2**63) <= value < 2**64:
            raise InputError(out_of_range(field, "int64"))
    if not ok:
        raise InputError(not_numbers(field, _what(want_bool), value))


def _ragged_shape(value: Any) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return shape


def row_shape(dims: Sequence[Any]) -> tuple[int, ...]:
    """ONNX Runtime's input dims without the row dimension; a named or unknown dim is -1."""
    return tuple(d if isinstance(d, int) and d > 0 else -1 for d in list(dims)[1:])


def kind_for(bundle: Bundle, inputs: Mapping[str, tuple[Any, Sequence[Any]]], *, max_text_bytes: int) -> InputKind:
    """The input kind of ``bundle`` (``preprocess.kind``); ``inputs``: model input name -> (dtype, dims)."""
    pre = bundle.spec.preprocess
    if pre.kind == "text":
        preprocessor = TextPreprocessor(bundle.tokenizer_path, pre.max_length, list(inputs))
        return TextKind(
            preprocessor=preprocessor,
            dtypes={n: dtype for n, (dtype, _) in inputs.items()},
            field=pre.text_field,
            max_bytes=max_text_bytes,
        )
    if pre.kind == "tensors":
        tensors = tuple(
            TensorInput(name=n, dtype=dtype, row_shape=row_shape(dims)) for n, (dtype, dims) in inputs.items()
        )
        return TensorKind(inputs=tensors, allow_non_finite=pre.allow_non_finite)
    raise BundleError(f"preprocess.kind {pre.kind!r} has no input kind in this joules; kinds: text, tensors")
