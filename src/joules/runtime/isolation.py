"""Failure isolation: when a call over several items fails, find the items that make it fail.

Every mode runs rows together (a model call, a dynamic batch of requests), and
one bad row must not fail the others: online a request gets its own error,
batch writes an error row and goes on, stream dead-letters or retries one
message. ``isolate`` calls on all items and, if that raises, splits them in
halves and calls each half again, down to single items: a batch of ``n`` with
one item that fails costs about ``2 log2 n`` extra calls instead of ``n``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def isolate(
    call: Callable[[Sequence[T]], Sequence[R]],
    items: Sequence[T],
    *,
    on_failure: Callable[[Sequence[T], Exception], None] | None = None,
) -> list[R | Exception]:
    """``call(items)``: one result per item, in order; each item that fails alone gets its exception.

    ``call`` must return one result per item it is given (a length mismatch counts as a failure
    of that call). ``on_failure`` sees each failed call before it is split (for logging).
    """
    if not items:
        return []
    try:
        results = call(items)
        if len(results) != len(items):
            raise RuntimeError(f"{len(results)} results for {len(items)} items")
        return list(results)
    # Whatever the call raises stays with the items that cause it: the caller decides per item
    # what an exception means (a 4xx, an error row, a dead letter or a retry).
    except Exception as e:
        if on_failure is not None:
            on_failure(items, e)
        if len(items) == 1:
            return [e]
        mid = len(items) // 2
        return isolate(call, items[:mid], on_failure=on_failure) + isolate(call, items[mid:], on_failure=on_failure)
