"""What a model call receives and returns: jobs in, result rows out, through the Predictor.

A ``Job`` is one request's admitted rows (the values the bundle's input kind
made of them, ``runtime/admission.py``); the ``ModelRunner`` is the
DynamicBatcher's handler: it joins the jobs of a batch, computes identical
texts once (a spam wave sends the same message to many inboxes at the same
moment), encodes the distinct rows once (texts are tokenized here and nowhere
else), cuts them into model calls by their work so rows of very different
length are not padded to each other (``Predictor.plan``), runs each call, and
answers each job as soon as its own rows are done. A call that fails is split
down to the rows that make it fail (``runtime/isolation.py``): only the jobs
holding those rows get the error.

Each row is a ``Prediction`` carrying its share of the call that computed it
(by tokens, rows for tensor models); a text computed once for several
positions has its share divided equally among them. The parts of a call add up
to the call, which is what ``/metrics`` counts.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from joules.meter import Cost, Measurement
from joules.runtime import Prediction, Predictor, isolate, total_cost
from joules.runtime.batching import Batch
from joules.runtime.planning import plan_runs

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Job:
    """One request's rows, admitted: one value per row (a text, a mapping of input name to array...)."""

    values: Sequence[Any]

    @property
    def rows(self) -> int:
        return len(self.values)

    def take(self, rows: Sequence[int]) -> Job:
        return Job([self.values[i] for i in rows])

    def row_keys(self) -> list[bytes]:
        """A 128-bit digest per row: cache keys of fixed size, whatever the input."""
        return [digest(v) for v in self.values]


def digest(value: Any) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    _feed(h, value)
    return h.digest()


def _feed(h: Any, value: Any) -> None:
    if isinstance(value, str):
        h.update(b"s" + value.encode("utf-8", "surrogatepass"))
    elif isinstance(value, (bytes, bytearray)):
        h.update(b"b" + bytes(value))
    elif isinstance(value, Mapping):
        for name in sorted(value):
            h.update(b"k" + str(name).encode())
            _feed(h, value[name])
    else:
        row = np.ascontiguousarray(value)
        h.update(str(row.dtype).encode() + str(row.shape).encode())
        h.update(row.tobytes())


@dataclass(frozen=True)
class Answer:
    """A job's rows in its order, and what computing them cost (the sum of the rows' shares)."""

    rows: list[Prediction]
    cost: Cost

    def __len__(self) -> int:
        return len(self.rows)


CallObserver = Callable[[int, Measurement], None]


class ModelRunner:
    """Runs batches of jobs on one Predictor (on the batcher's worker threads).

    ``max_batch_size`` and ``max_batch_tokens`` bound each model call (default: the
    Predictor's options).
    """

    def __init__(
        self,
        predictor: Predictor,
        *,
        max_batch_size: int | None = None,
        max_batch_tokens: int | None = None,
        on_call: CallObserver | None = None,
    ) -> None:
        self.predictor = predictor
        self.max_batch_size = max_batch_size or predictor.options.max_batch_size
        self.max_batch_tokens = max_batch_tokens or predictor.options.max_batch_tokens
        self.on_call = on_call

    def __call__(self, jobs: Batch[Job] | list[Job]) -> list[Answer | Exception]:
        p = self.predictor
        values = [v for j in jobs for v in j.values]
        owner = [k for k, j in enumerate(jobs) for _ in range(j.rows)]
        bounds = np.cumsum([0, *(j.rows for j in jobs)]).tolist()
        todo = [j.rows for j in jobs]  # rows of each job still to compute
        rows: list[Prediction | Exception | None] = [None] * len(values)

        def answer(k: int) -> Answer | Exception:
            mine = rows[bounds[k] : bounds[k + 1]]
            for r in mine:
                if isinstance(r, Exception):
                    return r
            done = [r for r in mine if isinstance(r, Prediction)]
            return Answer(done, total_cost(done))

        batch = jobs if isinstance(jobs, Batch) else None
        same = _distinct(values)  # positions of each distinct value
        units = p.encode([values[positions[0]] for positions in same])
        runs = plan_runs(p.work(units), self.max_batch_size, max_tokens=self.max_batch_tokens)
        for run in runs:
            positions = [r for u in run for r in same[u]]
            if batch is not None and all(batch.abandoned(owner[r]) for r in positions):
                continue  # every caller of these rows has given up (deadline, disconnect)
            results = isolate(lambda idx: self._call([units[u] for u in idx]), run, on_failure=self._failed)
            for u, result in zip(run, results, strict=True):
                share = same[u]
                if isinstance(result, Prediction) and len(share) > 1:
                    result = replace(result, cost=result.cost.scaled(1.0 / len(share)))
                for r in share:
                    rows[r] = result
            for k, done in Counter(owner[r] for r in positions).items():
                todo[k] -= done
                if todo[k] == 0 and batch is not None:
                    batch.deliver(k, answer(k))  # answer it now: later calls are others' rows
        return [answer(k) for k in range(len(jobs))]

    def _call(self, units: Sequence[Any]) -> list[Prediction]:
        result = self.predictor.run(units)
        if self.on_call is not None:
            self.on_call(len(units), result.measurement)
        return result.rows()

    def _failed(self, units: Sequence[Any], error: Exception) -> None:
        if len(units) > 1:
            log.warning("a model call of %d rows failed (%s); splitting it to find the row", len(units), error)


def _distinct(values: Sequence[Any]) -> list[list[int]]:
    """Positions of each distinct value, in first-seen order; only texts are compared (cheaply, by value)."""
    index: dict[Hashable, int] = {}
    same: list[list[int]] = []
    for i, v in enumerate(values):
        key: Hashable = v if isinstance(v, str) else (None, i)
        u = index.setdefault(key, len(same))
        if u == len(same):
            same.append([])
        same[u].append(i)
    return same
