"""Messages read from a source and the two things a message can become: a verdict or a dead letter."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Message:
    """One source entry, decoded and checked. ``problem`` set means it cannot be judged."""

    source_id: str  # the stream entry id, or the line number of a JSONL input
    text: str | None
    id: Any = None  # the message's own id field, when it has one
    problem: str | None = None  # why it is a dead letter (missing field, invalid UTF-8, too long...)
    original: Mapping[Any, Any] = field(default_factory=dict)  # the fields as received, for a dead letter
    deliveries: int = 1  # how many times it has been handed to a consumer, this time included
    produced_ms: float | None = None  # when it entered the source (wall clock, ms), for end-to-end latency
    last_error: str | None = None  # why an earlier attempt failed, when known

    @property
    def judgeable(self) -> bool:
        return self.problem is None and self.text is not None


@dataclass(frozen=True, slots=True)
class Verdict:
    message: Message
    label: str
    action: str | None
    probabilities: Mapping[str, float]
    model: str  # NAME:VERSION that judged it


@dataclass(frozen=True, slots=True)
class DeadLetter:
    message: Message
    reason: str


Outcome = Verdict | DeadLetter


@dataclass(frozen=True, slots=True)
class Written:
    """What a sink did with one outcome: appended it, or found it already answered (a redelivery)."""

    new: bool
    entry_id: str | None = None  # the sink entry, new or the earlier one
    at_ms: float | None = None  # when the outcome was appended (the sink's clock), for latency


def stream_id_ms(entry_id: str | bytes) -> float | None:
    """The millisecond time part of a Redis stream entry id (``1700000000000-0``)."""
    text = entry_id.decode("ascii", "replace") if isinstance(entry_id, bytes) else entry_id
    ms = text.partition("-")[0]
    return float(ms) if ms.isdigit() else None


def check_text(value: Any, field_name: str, max_bytes: int) -> tuple[str | None, str | None]:
    """``(text, None)`` when ``value`` can be judged, else ``(None, reason)``.

    Bytes are decoded as strict UTF-8; strings must encode back to UTF-8 (a JSON
    ``\\udc80`` escape gives a lone surrogate, which is not text). The size limit
    is on UTF-8 bytes, checked before decoding so a huge message costs nothing.
    """
    if value is None:
        return None, f"missing field {field_name!r}"
    if isinstance(value, bytes):
        if len(value) > max_bytes:
            return None, _too_long(field_name, len(value), max_bytes)
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError as e:
            return None, f"invalid UTF-8 in field {field_name!r} at byte {e.start}"
    elif isinstance(value, str):
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError as e:
            return None, f"invalid UTF-8 in field {field_name!r} (a lone surrogate at character {e.start})"
        if size > max_bytes:
            return None, _too_long(field_name, size, max_bytes)
        text = value
    else:
        return None, f"field {field_name!r} must be a string, got {type(value).__name__}"
    if not text.strip():
        return None, f"empty field {field_name!r}"
    return text, None


def _too_long(field_name: str, size: int, max_bytes: int) -> str:
    return f"field {field_name!r} is {size:,} bytes, over the limit of {max_bytes:,} (--max-text-bytes)"
