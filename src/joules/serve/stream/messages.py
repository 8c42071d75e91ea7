"""Messages read from a source, and what each becomes: an outcome holding its one result row.

A source only decodes a message's envelope (JSON, Redis fields); whether its
fields make an acceptable row is admission's to say (``runtime/admission.py``),
with the reason every mode gives. An ``Outcome`` holds the message and its
``Prediction``: a verdict when the row has a label, a dead letter (to
``<source>:dead``, or a JSONL line with ``reason``) when it has an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from joules.runtime.results import Prediction


@dataclass(frozen=True, slots=True)
class Message:
    """One source entry, decoded. ``problem`` set means it could not even be read as fields."""

    source_id: str  # the stream entry id, or the line number of a JSONL input
    fields: Mapping[str, Any] = field(default_factory=dict)  # field name -> raw value (str, bytes, JSON)
    id: Any = None  # the message's own id field, when it has one
    problem: str | None = None  # why it is a dead letter before admission (malformed JSON, a bad id...)
    original: Mapping[Any, Any] = field(default_factory=dict)  # the fields as received, for a dead letter
    deliveries: int = 1  # how many times it has been handed to a consumer, this time included
    produced_ms: float | None = None  # when it entered the source (wall clock, ms), for end-to-end latency
    last_error: str | None = None  # why an earlier attempt failed, when known


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a message became: its result row, a verdict, or a dead letter when the row has an error."""

    message: Message
    result: Prediction
    model: str = ""  # NAME:VERSION that judged it (empty for a message refused before the model)
    # A text-generation model's completion (text, finish_reason, token counts, cost): written instead of
    # label, action and probabilities (serve/stream/generation.py).
    completion: Mapping[str, Any] | None = None

    @property
    def dead(self) -> bool:
        return self.result.error is not None

    @property
    def reason(self) -> str | None:
        return self.result.error


def verdict(message: Message, result: Prediction, model: str, completion: Mapping[str, Any] | None = None) -> Outcome:
    return Outcome(message, result, model, completion)


def dead_letter(message: Message, reason: str, result: Prediction | None = None) -> Outcome:
    """A dead letter; ``result`` keeps the cost of a row the model computed (its output not finite)."""
    return Outcome(message, result if result is not None else Prediction.failed(reason))


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
