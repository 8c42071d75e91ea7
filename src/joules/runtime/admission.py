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

The kinds: ``TextKind`` (text), ``TensorKind`` (tensors), ``EmailKind`` (a raw
message read into one text, then tokenized as text), ``TabularKind`` (named
features into one tensor) and ``ImageKind`` (PNG/JPEG bytes into one tensor);
the last three use the converters of ``runtime/inputs/``, which word their
reasons. A new kind is one class with these methods and one branch in
``kind_for`` (plus its name in ``bundle.inputs.KINDS``); every mode reaches it
without change, because every mode goes through ``Predictor.admit`` /
``Predictor.predict_values``.

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
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
from tokenizers import Encoding

from joules.bundle import Bundle, Preprocess
from joules.bundle.inputs import KINDS
from joules.errors import BundleError, InputError
from joules.runtime.inputs import EmailConverter, ImageConverter, TabularConverter
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

__all__ = [
    "EmailKind",
    "ImageKind",
    "InputKind",
    "TabularKind",
    "TensorInput",
    "TensorKind",
    "TextKind",
    "admit_text",
    "field_of",
    "invalid_utf8",
    "kind_for",
    "tensor_fields",
    "text_view",
]


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


# -- e-mail, tabular, image (converters in runtime/inputs/) ----------------------------------------

_WARMUP_MAIL = (
    "From: Ann <ann@example.com>\r\nSubject: lunch\r\n\r\nLunch at noon?\r\n",
    "From: offers@example.net\r\nSubject: You won!\r\nContent-Type: text/html\r\n\r\n"
    "<p>Claim your <b>prize</b> now, a second and somewhat longer message to warm up a batch of two.</p>\r\n",
)


@dataclass(frozen=True, eq=False, kw_only=True)
class EmailKind(TextKind):
    """A raw RFC 822 message in one field, read into one text (``inputs/email.py``), then as ``TextKind``.

    The converter bounds what it parses (``preprocess.max_bytes``), so the text size bound of
    ``TextKind`` does not apply to the raw message.
    """

    converter: EmailConverter
    field: str = "email"
    name: str = "email"

    def admit(self, row: Mapping[str, Any]) -> str:
        return self.converter.admit(field_of(row, self.field))

    def warmup(self) -> list[str]:
        return [self.converter.admit(m) for m in _WARMUP_MAIL]


@dataclass(frozen=True, eq=False, kw_only=True)
class TabularKind:
    """Named numeric features (``inputs/tabular.py``) into one float tensor ``input`` [N, len(features)].

    A row is either the features by name (CSV/JSONL/Parquet columns, /v1 instances, stream fields)
    or the tensor row itself under the input's name (V2's ``input`` [N, F], ``predict_tensors``).
    """

    converter: TabularConverter
    name: str = "tabular"

    @property
    def fields(self) -> tuple[str, ...]:
        return self.converter.features

    @property
    def input(self) -> str:
        return self.converter.input

    def admit(self, row: Mapping[str, Any]) -> np.ndarray:
        if isinstance(row, Mapping) and self.input in row and self.input not in self.converter.features:
            value = row[self.input]
            if isinstance(value, np.ndarray) and value.ndim != 1:
                raise InputError(wrong_shape(self.input, value.shape, (len(self.fields),)))
            tensor: np.ndarray = self.converter.tensor(value)
            return tensor[0]
        return self.converter.admit(row)

    def encode(self, values: Sequence[np.ndarray]) -> list[np.ndarray]:
        return list(values)

    def work(self, unit: np.ndarray) -> int:
        return 1

    def feeds(self, units: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        return self.converter.batch(units)

    def warmup(self) -> list[np.ndarray]:
        return [np.zeros(len(self.fields), dtype=self.converter.dtype)]


@dataclass(frozen=True, eq=False, kw_only=True)
class ImageKind:
    """PNG/JPEG bytes in one field (``inputs/image.py``) decoded into one float tensor ``input``.

    The field holds the file's bytes (batch files, V2 binary, Redis), ``{"b64": ...}`` (/v1, JSONL) or
    base64 text (V2 JSON BYTES, a CSV cell); ``predict_tensors`` may pass images already converted.
    """

    converter: ImageConverter
    field: str = "image"
    name: str = "image"

    @property
    def fields(self) -> tuple[str, ...]:
        return (self.field,)

    @property
    def input(self) -> str:
        return self.converter.input

    @property
    def row_shape(self) -> tuple[int, ...]:
        c = self.converter
        h, w = c.size
        return (c.channels, h, w) if c.layout == "NCHW" else (h, w, c.channels)

    def admit(self, row: Mapping[str, Any]) -> np.ndarray:
        value = field_of(row, self.field)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            if value.shape != self.row_shape:
                raise InputError(wrong_shape(self.field, value.shape, self.row_shape))
            if not np.isfinite(value).all():
                raise InputError(not_finite(self.field, str(value.dtype)))
            return value.astype(self.converter.dtype, copy=False)
        if isinstance(value, str):
            value = {"b64": value}  # text carriers hold the file as base64
        result: np.ndarray = self.converter.admit(value)
        return result

    def encode(self, values: Sequence[np.ndarray]) -> list[np.ndarray]:
        return list(values)

    def work(self, unit: np.ndarray) -> int:
        return 1

    def feeds(self, units: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        return self.converter.batch(units)

    def warmup(self) -> list[np.ndarray]:
        return [np.zeros(self.row_shape, dtype=self.converter.dtype)]


def text_view(bundle: Bundle) -> Bundle:
    """An e-mail bundle read as the text model it is after its converter (its dataset holds those texts);
    any other bundle as it is. Evaluation and optimization measure e-mail models this way."""
    pre = bundle.spec.preprocess
    if pre.kind != "email":
        return bundle
    text = Preprocess(kind="text", tokenizer=pre.tokenizer, max_length=pre.max_length, tail_tokens=pre.tail_tokens)
    return Bundle(bundle.path, replace(bundle.spec, preprocess=text))


def tensor_fields(kind: InputKind) -> tuple[str, ...]:
    """The names under which a row may carry model-ready arrays (``Predictor.predict_tensors``)."""
    if isinstance(kind, TabularKind | ImageKind):
        return (kind.input,)
    return kind.fields


def row_shape(dims: Sequence[Any]) -> tuple[int, ...]:
    """ONNX Runtime's input dims without the row dimension; a named or unknown dim is -1."""
    return tuple(d if isinstance(d, int) and d > 0 else -1 for d in list(dims)[1:])


def kind_for(bundle: Bundle, inputs: Mapping[str, tuple[Any, Sequence[Any]]], *, max_text_bytes: int) -> InputKind:
    """The input kind of ``bundle`` (``preprocess.kind``); ``inputs``: model input name -> (dtype, dims)."""
    pre = bundle.spec.preprocess
    if pre.kind == "text":
        preprocessor = TextPreprocessor.from_spec(bundle.tokenizer_path, pre, list(inputs))
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
    if pre.kind == "email":
        return EmailKind(
            preprocessor=TextPreprocessor.from_spec(bundle.tokenizer_path, pre, list(inputs)),
            dtypes={n: dtype for n, (dtype, _) in inputs.items()},
            converter=EmailConverter.from_spec(pre),
            max_bytes=max_text_bytes,
        )
    if pre.kind in ("tabular", "image"):
        if pre.input not in inputs:
            raise BundleError(
                f"preprocess.input {pre.input!r} is not an input of the model (inputs: {list(inputs)}); "
                "set it to the graph input the features fill"
            )
        if len(inputs) != 1:
            raise BundleError(
                f"preprocess.kind {pre.kind} fills one graph input, but the model takes {list(inputs)}; "
                "use kind tensors for a model of several inputs"
            )
        if pre.kind == "tabular":
            return TabularKind(converter=TabularConverter.from_spec(pre))
        return ImageKind(converter=ImageConverter.from_spec(pre))
    raise BundleError(f"preprocess.kind {pre.kind!r} has no input kind in this joules; kinds: {', '.join(KINDS)}")
