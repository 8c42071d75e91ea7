"""Dynamic batching: concurrent requests share one model call.

Requests wait in a bounded queue; a free instance takes as many of them, in
order, as fit in ``window_rows`` rows (by default ``max_batch_size``) and runs
them as one handler call on a worker thread, so the event loop that feeds the queue never blocks on the model. When
no call is running a request is dispatched at once: waiting ``max_queue_delay``
for company only pays while another call is already busy (with one instance
the batch simply forms while the running call finishes).

Each caller gets its own result or its own error. The handler returns one
result (or one exception) per item; a handler that raises for a whole batch of
several items is re-run on halves of it down to the items that fail alone
(``isolation.isolate``, the same helper the Predictor splits a failed model
call with), so one bad request cannot fail the others (as ray-project/ray
``serve/batching.py`` hands each caller its own result).

A full queue refuses at once (``QueueFullError``, with a retry-after estimate);
a request past its deadline is refused (``DeadlineExceededError``) and, if its
call has not started, never computed; a caller that goes away (its awaiting
task is cancelled, e.g. because the client disconnected) is removed from the
queue and costs no model call.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from joules.errors import BatcherClosedError, ConfigError, DeadlineExceededError, QueueFullError
from joules.runtime.isolation import isolate
from joules.runtime.limits import MAX_CALL_ROWS, MAX_CALL_TOKENS, WINDOW_ROWS
from joules.runtime.planning import plan_runs  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

MAX_RETRY_AFTER_S = 60


@dataclass(frozen=True, kw_only=True)
class BatchingConfig:
    max_batch_size: int = MAX_CALL_ROWS  # rows per model call (limits.py: one default for every mode)
    # Padded tokens per model call (text models): bounds how long one call holds an instance,
    # so a request never waits behind seconds of someone else's long rows (limits.py).
    max_batch_tokens: int = MAX_CALL_TOKENS
    # Rows one handler call may gather from the queue (0: max_batch_size). A handler that cuts
    # its rows into model calls of at most max_batch_size (the server's runner) groups lengths
    # better from a wider window (docs/benchmarks.md, "--batch-window").
    window_rows: int = WINDOW_ROWS
    max_queue_delay_ms: float = 2.0  # longest wait for a fuller batch, only while a call is running
    max_queue: int = 1024  # requests waiting (not rows)
    instances: int = 1  # model calls running at once

    def __post_init__(self) -> None:
        if not isinstance(self.max_batch_size, int) or self.max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be a whole number >= 1, got {self.max_batch_size!r}")
        if not isinstance(self.max_batch_tokens, int) or self.max_batch_tokens < 1:
            raise ConfigError(f"max_batch_tokens must be a whole number >= 1, got {self.max_batch_tokens!r}")
        if not isinstance(self.window_rows, int) or self.window_rows < 0:
            raise ConfigError(f"window_rows must be a whole number >= 0 (0: max_batch_size), got {self.window_rows!r}")
        if not 0 <= self.max_queue_delay_ms <= 60_000:
            raise ConfigError(f"max_queue_delay_ms must be in [0, 60000], got {self.max_queue_delay_ms!r}")
        if not isinstance(self.max_queue, int) or self.max_queue < 1:
            raise ConfigError(f"max_queue must be a whole number >= 1, got {self.max_queue!r}")
        if not isinstance(self.instances, int) or not 1 <= self.instances <= 64:
            raise ConfigError(f"instances must be a whole number in [1, 64], got {self.instances!r}")

    @property
    def window(self) -> int:
        """Rows one handler call may gather."""
        return max(self.window_rows, self.max_batch_size) if self.window_rows else self.max_batch_size


@dataclass(eq=False)
class _Pending(Generic[T, R]):
    item: T
    rows: int
    future: asyncio.Future[R]
    enqueued: float
    deadline: float | None
    waited: float = field(default=0.0)
    # Set on the event loop when the caller gives up; read by the handler on its worker
    # thread (a plain attribute: a stale read only costs one model call).
    abandoned: bool = False
    delivered: bool = False  # answered early through Batch.deliver
    timer: asyncio.TimerHandle | None = None  # fires at the deadline


class Batch(list[T]):
    """The items of one handler call, as a list. A handler that makes several model calls can
    skip the items nobody waits for any more (``abandoned``) and answer an item as soon as its
    rows are done (``deliver``) instead of when the whole batch is."""

    def __init__(
        self,
        pending: Sequence[_Pending[T, Any]],
        deliver: Callable[[_Pending[T, Any], Any], None] | None = None,
    ) -> None:
        super().__init__(p.item for p in pending)
        self._pending = list(pending)
        self._deliver = deliver

    def abandoned(self, i: int) -> bool:
        return self._pending[i].abandoned

    def deliver(self, i: int, result: Any) -> None:
        """Answer item ``i`` now (safe from the handler's thread); the handler still returns it too."""
        p = self._pending[i]
        p.delivered = True
        if self._deliver is not None:
            self._deliver(p, result)


Handler = Callable[[Batch[T]], Sequence["R | BaseException"]]


class DynamicBatcher(Generic[T, R]):
    """Batches ``submit`` calls into ``handler`` calls on ``config.instances`` worker threads.

    Create and use it on one event loop; ``handler`` runs on the worker threads and
    must return one result or exception per item, in order.
    """

    def __init__(
        self,
        handler: Handler[T, R],
        config: BatchingConfig,
        *,
        name: str = "model",
        on_dispatch: Callable[[Sequence[float]], None] | None = None,
    ) -> None:
        self.handler = handler
        self.config = config
        self.name = name
        self._on_dispatch = on_dispatch
        self._queue: deque[_Pending[T, R]] = deque()
        self._queued_rows = 0
        self._running = 0
        self._closed = False
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # The instances: threads taking (batch, start time) from one inbox; None stops one.
        self._inbox: queue.SimpleQueue[tuple[list[_Pending[T, R]], float] | None] = queue.SimpleQueue()
        self._workers = [
            threading.Thread(target=self._work, name=f"joules-{name}-{i}", daemon=True) for i in range(config.instances)
        ]
        # Seconds per row, smoothed; only for the Retry-After estimate.
        self._row_seconds = 0.01

    # -- state -----------------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Requests waiting (not yet dispatched)."""
        return len(self._queue)

    @property
    def running(self) -> int:
        """Model calls in progress."""
        return self._running

    @property
    def closed(self) -> bool:
        return self._closed

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._task = self._loop.create_task(self._schedule(), name=f"batcher-{self.name}")
            for w in self._workers:
                w.start()

    async def close(self) -> None:
        """Stop taking requests, finish those already queued and running, then stop the workers."""
        self._closed = True
        self._wakeup.set()
        while self._queue or self._running:
            self._idle.clear()
            await self._idle.wait()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._timer is not None:
            self._timer.cancel()
        for w in self._workers:
            if w.is_alive():
                self._inbox.put(None)
        for w in self._workers:
            if w.is_alive():
                w.join()  # idle by now: nothing is queued or running

    # -- submitting ------------------------------------------------------------------------------

    async def submit(self, item: T, *, rows: int = 1, deadline: float | None = None) -> R:
        """Queue ``item`` (``rows`` rows) and wait for its result.

        ``deadline`` is a ``time.monotonic()`` instant. Raises QueueFullError at once when
        the queue is full, DeadlineExceededError past the deadline, BatcherClosedError
        once closed, or the handler's exception for this item.
        """
        # Everything up to the first await runs without yielding to the loop, so a caller
        # that looked this batcher up is queued before anyone can close it.
        self.admit()
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        pending: _Pending[T, R] = _Pending(item, rows, loop.create_future(), now, deadline)
        self._queue.append(pending)
        self._queued_rows += rows
        if deadline is not None:
            pending.timer = loop.call_later(max(0.0, deadline - now), self._expire, pending)
        if not self._running and len(self._queue) == 1:
            batch = self._take()  # idle: no company to wait for, so no need for the scheduler's turn
            if batch:
                self._dispatch(batch)
        else:
            self._wakeup.set()
        try:
            return await pending.future
        finally:
            if pending.timer is not None:
                pending.timer.cancel()
            if pending.future.cancelled():  # the caller went away (disconnect): it costs no model call
                pending.abandoned = True
                self._forget(pending)

    def admit(self) -> None:
        """Raise QueueFullError (or BatcherClosedError) if a request submitted now would be refused."""
        if self._closed:
            raise BatcherClosedError(f"model {self.name} is not taking requests (it is being unloaded)")
        if len(self._queue) >= self.config.max_queue:
            raise QueueFullError(
                f"model {self.name}: the queue is full ({self.config.max_queue} requests waiting); retry later",
                retry_after_s=self._retry_after(),
            )

    def _expire(self, pending: _Pending[T, R]) -> None:
        """The deadline timer: answer 'too late', and drop the request if its call has not started."""
        queued = pending in self._queue
        self._forget(pending)
        if pending.future.done():
            return  # its caller already went away
        pending.abandoned = True
        pending.future.set_exception(
            DeadlineExceededError(
                f"model {self.name}: no answer within the request's deadline "
                f"({'queued' if queued else 'running'} for {time.monotonic() - pending.enqueued:.3f} s)"
            )
        )

    def _forget(self, pending: _Pending[T, R]) -> None:
        try:
            self._queue.remove(pending)
        except ValueError:
            return  # already dispatched
        self._queued_rows -= pending.rows
        if not self._queue and not self._running:
            self._idle.set()

    def _retry_after(self) -> int:
        seconds = self._queued_rows * self._row_seconds / self.config.instances
        return max(1, min(MAX_RETRY_AFTER_S, math.ceil(seconds)))

    # -- scheduling ------------------------------------------------------------------------------

    async def _schedule(self) -> None:
        delay = self.config.max_queue_delay_ms / 1000.0
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            while self._queue and self._running < self.config.instances:
                if self._running and self._queued_rows < self.config.max_batch_size and not self._closed:
                    # A call is busy: wait a little for a fuller batch (until the oldest
                    # request has waited `delay`, the batch fills, or the busy call ends).
                    wait = self._queue[0].enqueued + delay - time.monotonic()
                    if wait > 0:
                        self._timer = asyncio.get_running_loop().call_later(wait, self._wakeup.set)
                        break
                batch = self._take()
                if batch:
                    self._dispatch(batch)
            if not self._queue and not self._running:
                self._idle.set()  # everything taken was cancelled or expired

    def _take(self) -> list[_Pending[T, R]]:
        batch: list[_Pending[T, R]] = []
        rows = 0
        now = time.monotonic()
        while self._queue:
            p = self._queue[0]
            if p.deadline is not None and now >= p.deadline:
                self._expire(p)  # its timer has not fired yet: answer it the same way (and dequeue it)
                continue
            if batch and rows + p.rows > self.config.window:
                break
            self._queue.popleft()
            self._queued_rows -= p.rows
            if p.future.done():  # cancelled by its caller
                continue
            p.waited = now - p.enqueued
            batch.append(p)
            rows += p.rows
        return batch

    def _dispatch(self, batch: list[_Pending[T, R]]) -> None:
        self._running += 1
        self._idle.clear()
        if self._on_dispatch is not None:
            try:
                self._on_dispatch([p.waited for p in batch])
            except Exception:  # an observer must never break serving
                log.exception("batch observer failed")
        self._inbox.put((batch, time.perf_counter()))

    def _work(self) -> None:
        """One instance, on its own thread: run the batches it is handed, report back to the loop."""
        assert self._loop is not None  # started by start()
        while (job := self._inbox.get()) is not None:
            batch, started = job
            try:
                outcomes: list[Any] = self._call(batch)
            except BaseException as e:  # _call answers Exceptions itself; this is anything worse
                outcomes = [e] * len(batch)
            try:
                self._loop.call_soon_threadsafe(self._finished, batch, started, outcomes)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return

    def _finished(self, batch: list[_Pending[T, R]], started: float, outcomes: list[Any]) -> None:
        """On the loop: a call is done; answer its callers and look for more work."""
        self._running -= 1
        elapsed = time.perf_counter() - started
        rows = sum(p.rows for p in batch)
        self._row_seconds = 0.8 * self._row_seconds + 0.2 * elapsed / max(1, rows)
        for p, outcome in zip(batch, outcomes, strict=True):
            self._settle(p, outcome)
        if not self._queue and not self._running:
            self._idle.set()
        self._wakeup.set()

    def _call(self, pending: list[_Pending[T, R]]) -> list[Any]:
        """On a worker thread: one handler call; if the whole batch failed, the items that fail it alone."""
        try:
            return self._checked(Batch(pending, self._deliver_soon))
        except Exception as e:
            if len(pending) == 1:
                return [e]
        # Nobody receives an answer for an item already answered or abandoned: skip those.
        outcomes: list[Any] = [BatcherClosedError("already answered or abandoned")] * len(pending)
        live = [i for i, p in enumerate(pending) if not (p.abandoned or p.delivered)]

        def call(idx: Sequence[int]) -> list[Any]:
            return self._checked(Batch([pending[i] for i in idx], self._deliver_soon))

        mid = len(live) // 2  # the whole batch has failed already: start from its halves
        results = isolate(call, live[:mid]) + isolate(call, live[mid:])
        for i, outcome in zip(live, results, strict=True):
            outcomes[i] = outcome
        return outcomes

    def _deliver_soon(self, pending: _Pending[T, Any], result: Any) -> None:
        """From a worker thread: settle one caller's future on the event loop."""
        assert self._loop is not None  # set by start(), before any dispatch
        self._loop.call_soon_threadsafe(self._settle, pending, result)

    @staticmethod
    def _settle(pending: _Pending[T, Any], outcome: Any) -> None:
        if pending.future.done():
            return  # its caller gave up (deadline or disconnect)
        if isinstance(outcome, BaseException):
            pending.future.set_exception(outcome)
        else:
            pending.future.set_result(outcome)

    def _checked(self, batch: Batch[T]) -> list[Any]:
        results = self.handler(batch)
        if len(results) != len(batch):
            raise RuntimeError(
                f"batch handler of {self.name} returned {len(results)} results for {len(batch)} requests"
            )
        return list(results)
