"""The Predictor: admit -> encode -> ONNX Runtime -> postprocess -> decide -> price.

Batch, online and stream serving all call this one class, so an input rule, a
tokenizer setting, a rule or a meter behaves the same in each of them. The
path of a request set, in every mode:

1. ``admit(row)`` per row: the bundle's input kind (``admission.py``) turns
   the row's raw fields into a value, or refuses it with the reason;
2. ``encode(values)`` once for the whole set (texts are tokenized here only);
3. ``plan(units)``: the set is cut into model calls by work (``planning.py``);
4. ``run(units)`` per call: feeds, the model, probabilities, labels, actions,
   and each row's share of the call's cost; a row whose output is not finite
   gets an error instead of a label;
5. a call that raises is split down to the row that makes it fail
   (``isolation.py``), so the other rows still get their answer.

``predict_values`` does 2 to 5 and returns one ``Prediction`` (or the
exception that row alone raised) per value; the online server does 3 and 5
itself, across the requests it batches, and calls ``run``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from joules.bundle import Activation, Bundle
from joules.decide import RuleSet
from joules.errors import BundleError, InputError
from joules.meter import ZERO, Cost, CostModel, EnergyMeter, Measurement
from joules.runtime.admission import InputKind, TextKind, kind_for, tensor_fields
from joules.runtime.executor import OnnxExecutor
from joules.runtime.isolation import isolate
from joules.runtime.options import RuntimeOptions
from joules.runtime.planning import plan_runs
from joules.runtime.preprocess import TextPreprocessor
from joules.runtime.results import OUTPUT_NOT_FINITE, Prediction
from joules.settings import load_settings

log = logging.getLogger(__name__)


@dataclass
class PredictionBatch:
    """Results for N rows, in the order they were given, and what computing them cost."""

    labels_order: tuple[str, ...]
    probabilities: np.ndarray  # [N, C] float32, columns in labels_order (NaN/inf where a row's output was)
    labels: list[str | None]  # None where the row's output is not finite
    actions: list[str | None]
    errors: list[str | None]  # the reason a row has no label (OUTPUT_NOT_FINITE), else None
    tokens: np.ndarray  # [N] work per row: tokens (rows for tensor models), what each row caused
    costs: list[Cost]  # each row's share of the calls that computed it
    measurement: Measurement = ZERO
    calls: int = 0  # model calls made

    def __len__(self) -> int:
        return len(self.labels)

    def rows(self) -> list[Prediction]:
        """One ``Prediction`` per row (the one row shape of every mode)."""
        order = self.labels_order
        out = []
        for p, lab, act, err, cost in zip(
            self.probabilities.tolist(), self.labels, self.actions, self.errors, self.costs, strict=True
        ):
            if err is not None:
                out.append(Prediction.failed(err, cost))
            else:
                out.append(Prediction(label=lab, probabilities=dict(zip(order, p, strict=True)), action=act, cost=cost))
        return out


@dataclass
class PredictorStats:
    rows: int = 0
    calls: int = 0
    measurement: Measurement = ZERO
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, rows: int, calls: int, m: Measurement) -> None:
        with self._lock:
            self.rows += rows
            self.calls += calls
            self.measurement = self.measurement + m


class Predictor:
    """Runs one bundle. Thread-safe: ONNX Runtime sessions and the tokenizer may be shared."""

    def __init__(
        self,
        bundle: Bundle,
        *,
        rules: RuleSet | None = None,
        options: RuntimeOptions | None = None,
        meter: EnergyMeter | None = None,
        prices: CostModel | None = None,
        version: int | None = None,
    ) -> None:
        self.bundle = bundle
        self.spec = bundle.spec
        self.name = bundle.spec.name
        self.version = version
        self.options = options or RuntimeOptions()
        self.rules = rules if rules is not None else bundle.spec.ruleset(str(bundle.path / "joules.yaml"))
        self.meter = meter or EnergyMeter()
        # The one pricing function of every mode: a measurement to joules, dollars and CO2.
        self.prices = prices or CostModel.from_settings(load_settings())
        self.executor = OnnxExecutor(bundle.model_path, self.options)
        self.labels = bundle.spec.labels
        self.output = bundle.spec.postprocess.output
        if self.output not in self.executor.outputs:
            raise BundleError(
                f"postprocess.output {self.output!r} is not an output of {bundle.model_path.name} "
                f"(outputs: {self.executor.outputs})"
            )
        self.stats = PredictorStats()
        inputs = {n: (self.executor.input_dtype(n), list(m.shape)) for n, m in self.executor.inputs.items()}
        self.kind: InputKind = kind_for(bundle, inputs, max_text_bytes=self.options.max_text_bytes)
        if self.options.warmup:
            self.warmup()

    @property
    def is_text(self) -> bool:
        return isinstance(self.kind, TextKind)

    @property
    def text(self) -> TextPreprocessor | None:
        """The tokenizer side of a text model (None for other kinds)."""
        return self.kind.preprocessor if isinstance(self.kind, TextKind) else None

    @property
    def fields(self) -> tuple[str, ...]:
        """The request fields one row is made of (``("text",)``, a tensor model's input names...)."""
        return self.kind.fields

    @property
    def ref(self) -> str:
        return self.name if self.version is None else f"{self.name}:{self.version}"

    def warmup(self) -> None:
        values = self.kind.warmup()
        self.run(self.encode(values), record=False)

    # -- the steps (see the module docstring) ----------------------------------------------------

    def admit(self, row: Mapping[str, Any]) -> Any:
        """One row's raw fields -> its value; InputError whose message is the reason otherwise."""
        return self.kind.admit(row)

    def encode(self, values: Sequence[Any]) -> list[Any]:
        return self.kind.encode(values)

    def work(self, units: Sequence[Any]) -> list[int]:
        return [self.kind.work(u) for u in units]

    def plan(self, work: Sequence[int]) -> list[list[int]]:
        """Indices of each model call: rows of similar length together, so each call pads little."""
        step = self.options.max_batch_size
        if not self.options.group_by_length:
            return [list(range(s, min(s + step, len(work)))) for s in range(0, len(work), step)]
        return plan_runs(work, step, max_tokens=self.options.max_batch_tokens)

    def run(self, units: Sequence[Any], *, record: bool = True) -> PredictionBatch:
        """One model call over ``units`` (as they are: no planning, no isolation)."""
        if not units:
            raise InputError("empty batch: send at least one row")
        started = self.meter.start()
        raw = self._call(self.kind.feeds(units))
        work = np.fromiter((self.kind.work(u) for u in units), dtype=np.int64, count=len(units))
        return self._finish(raw, work, started, 1, record)

    def predict_values(self, values: Sequence[Any], *, record: bool = True) -> list[Prediction | Exception]:
        """Admitted values -> one Prediction per value, or the exception that value alone raised."""
        units = self.encode(values)
        out: list[Prediction | Exception | None] = [None] * len(units)
        for call in self.plan(self.work(units)):
            results = isolate(
                lambda idx: self.run([units[i] for i in idx], record=record).rows(), call, on_failure=_split_note
            )
            for i, r in zip(call, results, strict=True):
                out[i] = r
        return [r if r is not None else RuntimeError("row not computed") for r in out]

    def predict_rows(self, rows: Sequence[Mapping[str, Any]], *, record: bool = True) -> list[Prediction | Exception]:
        """Raw rows -> one Prediction per row: refused rows carry the admission reason as their error."""
        out: list[Prediction | Exception | None] = [None] * len(rows)
        admitted: list[int] = []
        values: list[Any] = []
        for i, row in enumerate(rows):
            try:
                values.append(self.admit(row))
                admitted.append(i)
            except InputError as e:
                out[i] = Prediction.failed(str(e))
        if values:
            for i, r in zip(admitted, self.predict_values(values, record=record), strict=True):
                out[i] = r
        return [r if r is not None else RuntimeError("row not computed") for r in out]

    # -- whole sets at once (evaluation, optimization, benchmarks, `joules predict`) ----------------

    def predict(self, inputs: Any) -> PredictionBatch:
        """Texts (a list of str, or of {field: str}) for text models; {input: array [N, ...]} otherwise."""
        if self.is_text:
            return self.predict_texts(self._texts_from(inputs))
        if not isinstance(inputs, Mapping):
            raise InputError(f"model {self.ref} takes tensors {list(self.fields)}; send a mapping of input to array")
        return self.predict_tensors(inputs)

    def predict_texts(self, texts: Sequence[str], *, record: bool = True) -> PredictionBatch:
        if not self.is_text:
            raise InputError(f"model {self.ref} takes tensors {list(self.fields)}, not text")
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise InputError(f"expected a list of texts, got {type(texts).__name__}")
        field_name = self.fields[0]
        return self._predict_all([{field_name: t} for t in texts], record)

    def predict_tensors(self, tensors: Mapping[str, Any], *, record: bool = True) -> PredictionBatch:
        want, got = set(self.fields), set(tensors)
        if got == set(tensor_fields(self.kind)):
            want = got  # a tabular or image model's graph input, given as arrays already converted
        if want != got:
            raise InputError(
                f"model {self.ref} takes inputs {sorted(want)}; "
                f"missing {sorted(want - got)}, unknown {sorted(got - want)}"
            )
        arrays = {k: np.asarray(v) for k, v in tensors.items()}
        counts = {k: (a.shape[0] if a.ndim else 0) for k, a in arrays.items()}
        if len(set(counts.values())) != 1:
            raise InputError(f"inputs disagree on the number of rows: {counts}")
        n = next(iter(counts.values()))
        return self._predict_all([{k: a[i] for k, a in arrays.items()} for i in range(n)], record)

    def _predict_all(self, rows: Sequence[Mapping[str, Any]], record: bool) -> PredictionBatch:
        """Every row must be admitted (InputError naming the first that is not); no isolation."""
        if len(rows) == 0:
            raise InputError("empty batch: send at least one row")
        values = []
        for i, row in enumerate(rows):
            try:
                values.append(self.admit(row))
            except InputError as e:
                raise InputError(f"row {i}: {e}") from None
        units = self.encode(values)
        parts: list[tuple[list[int], PredictionBatch]] = [
            (idx, self.run([units[i] for i in idx], record=record)) for idx in self.plan(self.work(units))
        ]
        return _gather(self.labels, len(units), parts)

    # -- the model call and what follows it ------------------------------------------------------

    def _call(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        out = self.executor.run(feeds, [self.output])[self.output]
        return np.asarray(out, dtype=np.float32)

    def _finish(
        self, raw: np.ndarray, work: np.ndarray, started: tuple[float, float], calls: int, record: bool
    ) -> PredictionBatch:
        probs = self.postprocess(raw)
        finite = np.isfinite(probs).all(axis=1)
        n = len(probs)
        labels_idx = probs.argmax(axis=1).tolist()
        labels: list[str | None] = [self.labels[i] for i in labels_idx]
        actions: list[str | None] = list(self.rules.decide(probs)) if self.rules is not None else [None] * n
        errors: list[str | None] = [None] * n
        if not finite.all():
            # A label or an action computed from NaN would be arbitrary (argmax of NaN is the first
            # class, rules fall through to the default): the row gets the reason instead.
            for i in np.flatnonzero(~finite).tolist():
                labels[i], actions[i], errors[i] = None, None, OUTPUT_NOT_FINITE
        m = self.meter.stop(started)
        if record:
            self.stats.add(n, calls, m)
        costs = self.prices.split(m, work.tolist())
        return PredictionBatch(self.labels, probs, labels, actions, errors, work, costs, m, calls)

    def postprocess(self, raw: np.ndarray) -> np.ndarray:
        """Model outputs to probabilities [N, C] in label order."""
        act = self.spec.postprocess.activation
        x = raw.reshape(raw.shape[0], -1).astype(np.float32, copy=False)
        c = len(self.labels)
        with np.errstate(over="ignore", invalid="ignore"):  # non-finite rows are caught in _finish
            if act is Activation.SOFTMAX:
                z = np.exp(x - x.max(axis=1, keepdims=True))
                probs = z / z.sum(axis=1, keepdims=True)
            elif act is Activation.SIGMOID:
                probs = 1.0 / (1.0 + np.exp(-x))
                if c == 2 and x.shape[1] == 1:  # one logit for the positive class
                    probs = np.concatenate([1.0 - probs, probs], axis=1)
            else:
                probs = x
        if probs.shape[1] != c:
            raise BundleError(
                f"model {self.ref} produced {probs.shape[1]} scores per row "
                f"but joules.yaml names {c} labels {list(self.labels)}"
            )
        return probs.astype(np.float32, copy=False)

    def _texts_from(self, inputs: Any) -> list[Any]:
        field_name = self.fields[0]
        if isinstance(inputs, str) or not isinstance(inputs, Sequence):
            raise InputError(f"expected a list of texts, got {type(inputs).__name__}")
        return [item.get(field_name) if isinstance(item, Mapping) else item for item in inputs]


def _split_note(units: Sequence[Any], error: Exception) -> None:
    if len(units) > 1:
        log.warning("a model call of %d rows failed (%s); splitting it to find the rows", len(units), error)


def _gather(labels: tuple[str, ...], n: int, parts: Sequence[tuple[Sequence[int], PredictionBatch]]) -> PredictionBatch:
    """The results of several calls, each over the rows ``idx``, back in row order."""
    if len(parts) == 1 and list(parts[0][0]) == list(range(n)):
        return parts[0][1]
    probs = np.empty((n, len(labels)), dtype=np.float32)
    tokens = np.empty(n, dtype=np.int64)
    row_labels: list[str | None] = [None] * n
    actions: list[str | None] = [None] * n
    errors: list[str | None] = [None] * n
    costs: list[Cost] = [Cost()] * n
    m = ZERO
    for idx, b in parts:
        ix = np.asarray(idx, dtype=np.int64)
        probs[ix] = b.probabilities
        tokens[ix] = b.tokens
        for j, i in enumerate(idx):
            row_labels[i], actions[i], errors[i], costs[i] = b.labels[j], b.actions[j], b.errors[j], b.costs[j]
        m = m + b.measurement
    return PredictionBatch(labels, probs, row_labels, actions, errors, tokens, costs, m, len(parts))
