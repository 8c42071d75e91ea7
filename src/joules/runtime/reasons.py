"""Why a row is refused: one wording per admission rule, the same in every mode.

Online puts the reason in a 400's message (after ``instances[i]:`` or
``row i:``), batch writes it as an error row's ``reason``, stream as a dead
letter's ``reason``; none rewords it. Light to import: the sources of batch and
stream use it for the fields they check themselves (an id that is not UTF-8).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def missing(field: str) -> str:
    return f"missing field {field!r}"


def not_text(field: str, value: Any) -> str:
    return f"field {field!r} must be a string, got {type(value).__name__}"


def invalid_utf8(field: str) -> str:
    return f"field {field!r} is not valid UTF-8 text"


def too_long(field: str, size: int, limit: int) -> str:
    return f"field {field!r} is {size:,} bytes, over the limit of {limit:,} (max_text_bytes)"


def blank(field: str) -> str:
    return f"field {field!r} is empty or only whitespace"


def not_numbers(field: str, what: str, got: Any) -> str:
    return f"field {field!r} must hold {what}, got {type(got).__name__} ({str(got)[:20]!r})"


def wrong_shape(field: str, got: Sequence[int], want: Sequence[int]) -> str:
    return f"field {field!r} has shape {list(got)}; the model takes {list(want)} per row (-1: any size)"


def not_finite(field: str, dtype: str) -> str:
    return (
        f"field {field!r} holds a value that is not finite (NaN, infinity, or out of the {dtype} range); "
        "set preprocess.allow_non_finite: true in joules.yaml to allow it"
    )


def out_of_range(field: str, dtype: str) -> str:
    return f"field {field!r} holds a value outside the range of {dtype}"
