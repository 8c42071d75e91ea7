"""The plug-in points of streaming: where messages come from and where outcomes go.

A ``Source`` hands out messages and takes them back as done (``ack``) or to be
tried again later (``retry_later``); a ``Sink`` appends verdicts and dead
letters. The consumer loop (``consumer.py``) knows nothing else about them, so
Redis Streams and JSONL on stdin/stdout run the same loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from joules.serve.stream.messages import Message, Outcome, Written


@dataclass(frozen=True, kw_only=True)
class Backlog:
    """How far behind the consumers are, as the broker reports it."""

    lag: int | None  # entries not yet delivered to the group (None when the broker cannot tell)
    pending: int  # delivered to some consumer of the group but not acked
    consumers: int


class Source(Protocol):
    description: str

    @property
    def exhausted(self) -> bool:
        """True when no message will ever come again (end of a file); a broker never is."""
        ...

    def fetch(self, max_count: int, block_ms: int) -> list[Message]:
        """Up to ``max_count`` messages, waiting up to ``block_ms`` for the first (0: do not wait)."""
        ...

    def ack(self, messages: Sequence[Message]) -> None:
        """Their outcomes are written: never deliver them again."""
        ...

    def retry_later(self, messages: Sequence[Message], error: str) -> None:
        """Processing failed (not the input's fault): deliver them again later, counting the attempt."""
        ...

    def stop_reading(self) -> None:
        """From now on ``fetch`` returns only messages already received (read ahead), never new ones."""
        ...

    def recover(self) -> None:
        """The broker was lost mid-batch: forget the messages in hand, they will be delivered again."""
        ...

    def backlog(self) -> Backlog | None: ...

    def close(self) -> None: ...


class Sink(Protocol):
    description: str

    def write(self, outcomes: Sequence[Outcome]) -> list[Written]:
        """Append every outcome, each at most once per source message; one result per outcome, in order."""
        ...

    def close(self) -> None: ...
