"""The consumer loop: read a micro-batch, judge it, write its outcomes, ack it.

A micro-batch closes when it holds ``--batch-size`` messages or ``--max-wait-ms``
after its first message arrived. Each message becomes exactly one outcome:

- a dead letter when it cannot be read (malformed JSON), when admission refuses
  its row (missing field, invalid UTF-8, over ``--max-text-bytes``, blank, a
  non-finite number: the reason every mode gives), when the model's output for
  it is not finite, when the model rejects it, or when it has already been
  delivered more than ``--max-attempts`` times (its consumers kept dying or
  failing on it);
- otherwise a verdict from the Predictor.

The micro-batch goes through the path every mode shares
(``Predictor.predict_values``): encoded once, cut into model calls by work, and
a call that fails is split down to the message that makes it fail
(``runtime/isolation.py``).

Outcomes are written first and acked after, so a crash in between only causes
a redelivery, which the sink recognises. A failure that is not the input's
fault (the runtime raising) leaves the message to be tried again later. The
loop stops when asked (SIGTERM) after settling the batch in hand, or when the
source is exhausted (end of stdin); it never stops because of one message.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import partial
from typing import TypeVar

from joules.errors import BrokerUnavailableError, InputError
from joules.meter import Cost
from joules.runtime import Prediction, Predictor
from joules.serve.stream.base import Sink, Source
from joules.serve.stream.config import StreamConfig
from joules.serve.stream.messages import Message, Outcome, dead_letter, verdict
from joules.serve.stream.metrics import StreamMetrics

log = logging.getLogger("joules.stream")
T = TypeVar("T")

IDLE_BLOCK_MS = 500  # how long one read waits when nothing is in hand; bounds how late a stop is seen
BACKOFF_S = (0.1, 5.0)  # first and longest wait between tries while the broker is unreachable


class StreamConsumer:
    def __init__(
        self,
        predictor: Predictor,
        source: Source,
        sink: Sink,
        config: StreamConfig,
        metrics: StreamMetrics | None = None,
    ) -> None:
        self.predictor = predictor
        self._attach(predictor.ref, source, sink, config, metrics)
        # Message field -> the model's field it feeds (a text model's may be renamed with --text-field).
        fields = predictor.fields
        if config.text_field is not None and len(fields) == 1:
            self._sources = {fields[0]: config.text_field}
        else:
            self._sources = {f: f for f in fields}

    def _attach(
        self, ref: str, source: Source, sink: Sink, config: StreamConfig, metrics: StreamMetrics | None
    ) -> None:
        """What every consumer holds, whatever judges its messages (``ref``: the model the metrics name)."""
        self.source = source
        self.sink = sink
        self.cfg = config
        self.metrics = metrics or StreamMetrics(model=ref, report_every_s=config.report_every_s)
        self._stop = threading.Event()
        self._backoff = BACKOFF_S[0]

    def run(self, stop: threading.Event) -> StreamMetrics:
        self._stop = stop
        while not stop.is_set():
            try:
                batch = self._collect(stop)
            except BrokerUnavailableError as e:
                # A read whose reply was lost leaves entries pending to us unseen: read our own
                # pending entries again once the broker is back.
                self.source.recover()
                self._broker_down(e)
                continue
            self._backoff = BACKOFF_S[0]
            if batch:
                self.settle(batch)
            elif self.source.exhausted:
                break
            if self.metrics.report_due():
                self._report()
        # Stopping: settle what the source already holds (lines read ahead from stdin); a broker
        # source hands out nothing new once asked to stop reading.
        self.source.stop_reading()
        try:
            while batch := self.source.fetch(self.cfg.batch_size, 0):
                self.settle(batch)
        except BrokerUnavailableError as e:
            log.warning("broker unavailable while stopping; what was in hand stays pending: %s", e)
        self._report(final=True)
        return self.metrics

    def _broker_down(self, e: BrokerUnavailableError) -> None:
        self.metrics.record_broker_error()
        log.warning("broker unavailable, retrying in %.1f s: %s", self._backoff, e)
        self._stop.wait(self._backoff)
        self._backoff = min(self._backoff * 2, BACKOFF_S[1])

    def _until_done(self, step: Callable[[], T], what: str) -> T | None:
        """Run ``step`` (idempotent) until the broker takes it; None if asked to stop first.

        The outcomes in hand are kept and written again rather than read again, so a broker
        outage costs no delivery attempt; a stop during an outage leaves them pending, to be
        delivered again.
        """
        while True:
            try:
                return step()
            except BrokerUnavailableError as e:
                if self._stop.is_set():
                    log.warning("stopping with %s; those messages stay pending: %s", what, e)
                    return None
                self._broker_down(e)

    def _report(self, final: bool = False) -> None:
        try:
            self.metrics.record_backlog(self.source.backlog())
        except BrokerUnavailableError as e:
            log.warning("cannot read the backlog: %s", e)
        line = self.metrics.report_line()
        log.info("%s%s", "stopped: " if final else "", line)

    # -- one micro-batch -------------------------------------------------------------------------

    def _collect(self, stop: threading.Event) -> list[Message]:
        size = self.cfg.batch_size
        batch = self.source.fetch(size, IDLE_BLOCK_MS)
        if not batch:
            return []
        deadline = time.monotonic() + self.cfg.max_wait_ms / 1000
        while len(batch) < size and not stop.is_set() and not self.source.exhausted:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch += self.source.fetch(size - len(batch), max(1, math.ceil(left * 1000)))
            except BrokerUnavailableError as e:
                log.warning("broker unavailable; judging the %d messages in hand first: %s", len(batch), e)
                self.source.recover()
                break
        return batch

    def settle(self, batch: Sequence[Message]) -> None:
        """Judge ``batch``, write one outcome per message that has one, ack those; the rest retry later."""
        outcomes, cost, retry = self.judge(batch)
        if outcomes:
            written = self._until_done(lambda: self.sink.write(outcomes), f"{len(outcomes)} outcomes unwritten")
            if written is None:
                return
            messages = [o.message for o in outcomes]
            self._until_done(lambda: self.source.ack(messages), f"{len(messages)} messages unacked")
            self.metrics.record(outcomes, written, cost)
        if retry:
            by_error: dict[str, list[Message]] = defaultdict(list)
            for m, error in retry:
                by_error[error].append(m)
            for error, messages in by_error.items():
                self._until_done(partial(self.source.retry_later, messages, error), "a failure unrecorded")
            self.metrics.record_retries(len(retry))

    def judge(self, batch: Sequence[Message]) -> tuple[list[Outcome], Cost, list[tuple[Message, str]]]:
        """Outcomes in batch order, what the model calls cost, and the messages to try again with their error."""
        outcomes: dict[int, Outcome] = {}
        todo: list[int] = []
        values = []
        for i, m in enumerate(batch):
            settled = self._unjudgeable(m)
            if settled is not None:
                outcomes[i] = settled
                continue
            try:
                values.append(self.predictor.admit({f: m.fields.get(src) for f, src in self._sources.items()}))
            except InputError as e:
                outcomes[i] = dead_letter(m, str(e))
                continue
            todo.append(i)
        retry: list[tuple[Message, str]] = []
        cost = Cost()
        results = self.predictor.predict_values(values) if values else []
        for i, result in zip(todo, results, strict=True):
            m = batch[i]
            if isinstance(result, Prediction):
                cost = cost + result.cost
                if result.error is not None:
                    outcomes[i] = dead_letter(m, result.error, result)
                else:
                    outcomes[i] = verdict(m, result, self.predictor.ref)
            elif isinstance(result, InputError):
                outcomes[i] = dead_letter(m, f"the model rejected the row: {result}")
            else:
                # Not the input's fault, as far as anyone can tell: logged with its traceback and
                # tried again, up to --max-attempts; one message never takes the consumer down.
                log.error("judging message %s failed: %s", m.source_id, _describe(result), exc_info=result)
                if m.deliveries >= self.cfg.max_attempts:
                    outcomes[i] = dead_letter(
                        m, f"judging failed on attempt {m.deliveries} of {self.cfg.max_attempts}: {_describe(result)}"
                    )
                else:
                    retry.append((m, _describe(result)))
        return [outcomes[i] for i in sorted(outcomes)], cost, retry

    def _unjudgeable(self, m: Message) -> Outcome | None:
        """The dead letter of a message that cannot be judged (unreadable, or delivered too often), else None."""
        if m.problem is not None:
            return dead_letter(m, m.problem)
        if m.deliveries > self.cfg.max_attempts:
            return dead_letter(m, self._gave_up(m))
        return None

    def _gave_up(self, m: Message) -> str:
        tried = m.deliveries - 1
        why = (
            f"last error: {m.last_error}"
            if m.last_error
            else "the consumers holding it stopped before finishing it (killed or crashed)"
        )
        return f"not judged after {tried} deliveries (--max-attempts {self.cfg.max_attempts}); {why}"


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"
