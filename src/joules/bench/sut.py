"""The in-process system under test: a Predictor answering the load generator over a pipe.

One reader thread takes queries off the pipe; one worker thread runs the
Predictor on whatever is waiting, up to ``max_batch`` rows at a time (the
simplest dynamic batching: no timeout, so a lone query runs at once). The
Predictor's measurements of the calls inside the measured phase are summed.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

from joules.meter import ZERO, Measurement

_MEASURE, _END, _CLOSED = "measure", "end", "closed"


class PredictorSUT:
    def __init__(self, predictor: Any, texts: Sequence[str], conn: Connection, *, max_batch: int) -> None:
        self.predictor = predictor
        self.texts = texts
        self.conn = conn
        self.max_batch = max_batch
        self.inbox: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.measuring = False
        self.measurement: Measurement = ZERO
        self.rows = 0
        self.calls = 0
        self.error: str | None = None
        self._threads = [
            threading.Thread(target=self._read, name="bench-sut-reader", daemon=True),
            threading.Thread(target=self._work, name="bench-sut-worker", daemon=True),
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def join(self, timeout: float | None = None) -> None:
        for t in self._threads:
            t.join(timeout)

    def _read(self) -> None:
        try:
            while True:
                self.inbox.put(self.conn.recv())
        except (EOFError, OSError):
            self.inbox.put((_CLOSED,))

    def _work(self) -> None:
        while True:
            batch: list[tuple[int, int]] = []
            item = self.inbox.get()
            while True:
                kind = item[0]
                if kind == "q":
                    batch.append((item[1], item[2]))
                else:
                    self._run(batch)
                    batch = []
                    if kind == _CLOSED:
                        return
                    self.measuring = kind == _MEASURE
                if len(batch) >= self.max_batch:
                    break
                try:
                    item = self.inbox.get_nowait()
                except queue.Empty:
                    break
            self._run(batch)

    def _run(self, batch: list[tuple[int, int]]) -> None:
        if not batch:
            return
        err: str | None = None
        try:
            result = self.predictor.predict_texts([self.texts[s] for _, s in batch])
        except Exception as e:  # sent back as each query's error, counted by the load generator
            err = f"{type(e).__name__}: {e}"
            if self.error is None:
                self.error = err
        else:
            if self.measuring:
                self.measurement = self.measurement + result.measurement
                self.rows += len(batch)
                self.calls += result.calls
        # If the load generator has gone, the reader thread ends the loop.
        with contextlib.suppress(BrokenPipeError, OSError):
            self.conn.send([(qid, err) for qid, _ in batch])
