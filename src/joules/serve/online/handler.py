"""What a model call receives and returns: jobs in, outcomes out, through the Predictor.

A ``Job`` is one request's rows; the ``ModelRunner`` is the DynamicBatcher's
handler: it joins the jobs of a batch, computes identical texts once (a spam
wave sends the same message to many inboxes at the same moment), cuts the rest
into model calls so rows of very different length are not padded to each other
(``plan_runs``), calls the Predictor once per call, and answers each job as soon
as its own rows are done.

Each outcome carries its job's ``Cost``: every call's measurement is divided
among the jobs whose rows it computed, by their tokens (rows for tensor
models); a text computed once for several jobs has its work shared equally
among the positions that asked for it. The parts of a call add up to the call,
which is what ``/metrics`` counts.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import cast

import numpy as np

from joules.errors import InputError
from joules.meter import Cost, CostModel, Measurement
from joules.runtime import PredictionBatch, Predictor
from joules.runtime.batching import Batch, plan_runs


@dataclass(frozen=True, eq=False)
class Job:
    """One request's rows: ``texts`` for a text model, else ``tensors`` sharing their first dimension."""

    texts: Sequence[str] | None = None
    tensors: Mapping[str, np.ndarray] | None = None

    def __post_init__(self) -> None:
        if (self.texts is None) == (self.tensors is None):
            raise InputError("a job carries either texts or tensors")

    @property
    def rows(self) -> int:
        if self.texts is not None:
            return len(self.texts)
        assert self.tensors is not None  # one of the two, checked above
        return int(next(iter(self.tensors.values())).shape[0])

    def take(self, rows: Sequence[int]) -> Job:
        if self.texts is not None:
            return Job(texts=[self.texts[i] for i in rows])
        assert self.tensors is not None
        idx = np.asarray(rows, dtype=np.int64)
        return Job(tensors={k: v[idx] for k, v in self.tensors.items()})

    def row_keys(self) -> list[bytes]:
        """A 128-bit digest per row: cache keys of fixed size, whatever the input."""
        if self.texts is not None:
            return [hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=16).digest() for t in self.texts]
        assert self.tensors is not None
        keys = []
        for i in range(self.rows):
            h = hashlib.blake2b(digest_size=16)
            for name in sorted(self.tensors):
                row = np.ascontiguousarray(self.tensors[name][i])
                h.update(name.encode())
                h.update(str(row.dtype).encode() + str(row.shape).encode())
                h.update(row.tobytes())
            keys.append(h.digest())
        return keys


@dataclass(frozen=True, eq=False)
class Outcome:
    """Results for a job's rows, in its order, and what computing them cost."""

    probabilities: np.ndarray  # [rows, C] float32
    labels: list[str]
    actions: list[str | None]
    cost: Cost = field(default_factory=Cost)  # this job's share of the model calls that computed its rows

    def __len__(self) -> int:
        return len(self.labels)

    @staticmethod
    def assemble(rows: Sequence[tuple[np.ndarray, str, str | None]], cost: Cost) -> Outcome:
        return Outcome(
            probabilities=np.stack([r[0] for r in rows]).astype(np.float32, copy=False),
            labels=[r[1] for r in rows],
            actions=[r[2] for r in rows],
            cost=cost,
        )

    def row(self, i: int) -> tuple[np.ndarray, str, str | None]:
        return self.probabilities[i], self.labels[i], self.actions[i]


CallObserver = Callable[[int, Measurement], None]


class ModelRunner:
    """Runs batches of jobs on one Predictor (on the batcher's worker threads).

    With ``prices`` each outcome carries its job's cost; without, a zero cost.
    """

    def __init__(
        self,
        predictor: Predictor,
        *,
        max_batch_size: int,
        max_batch_tokens: int | None = None,
        on_call: CallObserver | None = None,
        prices: CostModel | None = None,
    ) -> None:
        self.predictor = predictor
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.on_call = on_call
        self.prices = prices

    def __call__(self, jobs: Batch[Job] | list[Job]) -> list[Outcome]:
        n = sum(j.rows for j in jobs)
        classes = len(self.predictor.labels)
        probs = np.zeros((n, classes), dtype=np.float32)
        labels: list[str] = [""] * n
        actions: list[str | None] = [None] * n
        owner = [k for k, j in enumerate(jobs) for _ in range(j.rows)]
        bounds = np.cumsum([0, *(j.rows for j in jobs)]).tolist()
        todo = [j.rows for j in jobs]  # rows of each job still to compute
        costs = [Cost() for _ in jobs]

        def outcome(k: int) -> Outcome:
            a, b = bounds[k], bounds[k + 1]
            return Outcome(probs[a:b], labels[a:b], actions[a:b], costs[k])

        batch = jobs if isinstance(jobs, Batch) else None
        for units, call in self._plan(jobs):
            rows = [r for unit in units for r in unit]
            if batch is not None and all(batch.abandoned(owner[r]) for r in rows):
                continue  # every caller of these rows has given up (deadline, disconnect)
            result = call()
            for unit, p, lab, act in zip(units, result.probabilities, result.labels, result.actions, strict=True):
                probs[unit] = p
                for r in unit:
                    labels[r] = lab
                    actions[r] = act
            if self.on_call is not None:
                self.on_call(len(units), result.measurement)
            if self.prices is not None:
                for k, part in shares(self.prices, units, owner, result).items():
                    costs[k] = costs[k] + part
            for k, done in Counter(owner[r] for r in rows).items():
                todo[k] -= done
                if todo[k] == 0 and batch is not None:
                    batch.deliver(k, outcome(k))  # answer it now: later calls are others' rows
        return [outcome(k) for k in range(len(jobs))]

    def _plan(self, jobs: Sequence[Job]) -> list[tuple[list[list[int]], Callable[[], PredictionBatch]]]:
        """One Predictor call per planned run: the call, and for each of its rows the positions
        in the joined batch it answers (identical texts in one batch are computed once)."""
        p = self.predictor
        if p.text is not None:
            texts = [t for j in jobs for t in (j.texts or ())]
            index: dict[str, int] = {}
            same: list[list[int]] = []  # positions of each distinct text
            for i, t in enumerate(texts):
                u = index.setdefault(t, len(same))
                if u == len(same):
                    same.append([])
                same[u].append(i)
            distinct = [texts[positions[0]] for positions in same]
            if len(distinct) == 1:
                runs = [[0]]  # nothing to plan (every request alone at low load): skip tokenizing twice
            else:
                # Token counts decide the runs; tokenizing twice costs well under 1 % of a call.
                lengths = [len(e.ids) for e in p.text.encode(distinct)]
                runs = plan_runs(lengths, self.max_batch_size, max_tokens=self.max_batch_tokens)
            return [([same[u] for u in run], partial(p.predict_texts, [distinct[u] for u in run])) for run in runs]
        names = list(jobs[0].tensors or {})
        joined = {k: np.concatenate([(j.tensors or {})[k] for j in jobs]) for k in names}
        n = next(iter(joined.values())).shape[0]
        out: list[tuple[list[list[int]], Callable[[], PredictionBatch]]] = []
        for start in range(0, n, self.max_batch_size):
            end = min(n, start + self.max_batch_size)
            feeds = {k: v[start:end] for k, v in joined.items()}
            out.append(([[r] for r in range(start, end)], partial(p.predict_tensors, feeds)))
        return out


def shares(
    prices: CostModel, units: Sequence[Sequence[int]], owner: Sequence[int], result: PredictionBatch
) -> dict[int, Cost]:
    """Each job's part of one call: a unit's tokens (rows) shared equally among the positions that asked for it.

    ``units[i]`` are the positions the call's row ``i`` answers; ``owner[r]`` is the job of position ``r``.
    """
    owners: list[int] = []
    work: list[float] = []
    for unit, tokens in zip(units, result.tokens.tolist(), strict=True):
        for r in unit:
            owners.append(owner[r])
            work.append(tokens / len(unit))
    return cast(dict[int, Cost], prices.split_by_owner(result.measurement, owners, work))
