"""The Predictor: preprocess -> ONNX Runtime -> postprocess -> decide.

Batch, online and stream serving all call this one class, so a tokenizer
setting, a rule or a meter behaves the same in each of them.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from joules.bundle import Activation, Bundle
from joules.decide import RuleSet
from joules.errors import InputError
from joules.meter import ZERO, EnergyMeter, Measurement
from joules.runtime.executor import OnnxExecutor, RuntimeOptions
from joules.runtime.planning import plan_runs
from joules.runtime.preprocess import TextPreprocessor

WARMUP_TEXTS = ["warm up the session", "a second, somewhat longer text to warm up a batch of two"]


@dataclass
class PredictionBatch:
    """Results for N rows, in the order they were given."""

    labels_order: tuple[str, ...]
    probabilities: np.ndarray  # [N, C] float32, columns in labels_order
    labels: list[str]
    actions: list[str | None]
    tokens: np.ndarray  # [N] tokens per row (rows for tensor models): the work each row caused
    measurement: Measurement = ZERO
    calls: int = 0  # model calls made (sub-batches)

    def __len__(self) -> int:
        return len(self.labels)

    def records(self) -> list[dict[str, Any]]:
        """One ``{"label", "probabilities": {class: p}, "action"}`` per row."""
        probs = self.probabilities.tolist()
        return [
            {"label": lab, "probabilities": dict(zip(self.labels_order, p, strict=True)), "action": act}
            for lab, p, act in zip(self.labels, probs, self.actions, strict=True)
        ]


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
        version: int | None = None,
    ) -> None:
        self.bundle = bundle
        self.spec = bundle.spec
        self.name = bundle.spec.name
        self.version = version
        self.options = options or RuntimeOptions()
        self.rules = rules if rules is not None else bundle.spec.ruleset(str(bundle.path / "joules.yaml"))
        self.meter = meter or EnergyMeter()
        self.executor = OnnxExecutor(bundle.model_path, self.options)
        self.labels = bundle.spec.labels
        self.output = bundle.spec.postprocess.output
        self.stats = PredictorStats()
        self.text: TextPreprocessor | None = None
        if bundle.spec.preprocess.kind == "text":
            self.text = TextPreprocessor(
                bundle.tokenizer_path, bundle.spec.preprocess.max_length, list(self.executor.inputs)
            )
        self._dtypes = {n: self.executor.input_dtype(n) for n in self.executor.inputs}
        if self.options.warmup:
            self.warmup()

    @property
    def is_text(self) -> bool:
        return self.text is not None

    @property
    def ref(self) -> str:
        return self.name if self.version is None else f"{self.name}:{self.version}"

    def warmup(self) -> None:
        if self.text is not None:
            self.predict_texts(WARMUP_TEXTS, record=False)
        else:
            feeds = {}
            for name, meta in self.executor.inputs.items():
                shape = [d if isinstance(d, int) and d > 0 else 1 for d in meta.shape]
                feeds[name] = np.zeros(shape, dtype=self._dtypes[name])
            self.predict_tensors(feeds, record=False)

    # -- public entry points ---------------------------------------------------------------------

    def predict(self, inputs: Any) -> PredictionBatch:
        """Texts (a list of str, or of {text_field: str}) for text models; {input: array} otherwise."""
        if self.text is not None:
            return self.predict_texts(self._texts_from(inputs))
        if not isinstance(inputs, Mapping):
            raise InputError(
                f"model {self.ref} takes tensors {list(self.executor.inputs)}; send a mapping of input name to array"
            )
        return self.predict_tensors(inputs)

    def predict_texts(self, texts: Sequence[str], *, record: bool = True) -> PredictionBatch:
        if self.text is None:
            raise InputError(f"model {self.ref} takes tensors {list(self.executor.inputs)}, not text")
        _check_texts(texts)
        started = self.meter.start()
        encodings = self.text.encode(texts)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        n = len(texts)
        raw: np.ndarray | None = None
        calls = 0
        for idx in self._runs(lengths):
            feeds = self.text.batch([encodings[i] for i in idx], self._dtypes)
            out = self._run(feeds)
            if raw is None:
                raw = np.empty((n, *out.shape[1:]), dtype=np.float32)
            raw[idx] = out
            calls += 1
        assert raw is not None  # texts is non-empty (checked above)
        return self._finish(raw, lengths, started, calls, record)

    def predict_tensors(self, tensors: Mapping[str, Any], *, record: bool = True) -> PredictionBatch:
        feeds = self._check_tensors(tensors)
        n = next(iter(feeds.values())).shape[0]
        started = self.meter.start()
        parts = []
        step = self.options.max_batch_size
        for start in range(0, n, step):
            parts.append(self._run({k: v[start : start + step] for k, v in feeds.items()}))
        raw = np.concatenate(parts).astype(np.float32, copy=False)
        return self._finish(raw, np.ones(n, dtype=np.int64), started, len(parts), record)

    # -- steps -----------------------------------------------------------------------------------

    def _runs(self, lengths: np.ndarray) -> list[np.ndarray]:
        """Row indices of each model call: rows of similar length together, so each call pads little."""
        step = self.options.max_batch_size
        if not self.options.group_by_length:
            return [np.arange(s, min(s + step, len(lengths))) for s in range(0, len(lengths), step)]
        runs = plan_runs(lengths.tolist(), step, max_tokens=self.options.max_batch_tokens)
        return [np.asarray(r, dtype=np.int64) for r in runs]

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        out = self.executor.run(feeds, [self.output])[self.output]
        return np.asarray(out, dtype=np.float32)

    def _finish(
        self, raw: np.ndarray, work: np.ndarray, started: tuple[float, float], calls: int, record: bool
    ) -> PredictionBatch:
        probs = self.postprocess(raw)
        labels_idx = probs.argmax(axis=1)
        labels = [self.labels[i] for i in labels_idx.tolist()]
        actions: list[str | None] = list(self.rules.decide(probs)) if self.rules is not None else [None] * len(labels)
        m = self.meter.stop(started)
        if record:
            self.stats.add(len(labels), calls, m)
        return PredictionBatch(self.labels, probs, labels, actions, work, m, calls)

    def postprocess(self, raw: np.ndarray) -> np.ndarray:
        """Model outputs to probabilities [N, C] in label order."""
        act = self.spec.postprocess.activation
        x = raw.reshape(raw.shape[0], -1).astype(np.float32, copy=False)
        c = len(self.labels)
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
            raise InputError(
                f"model {self.ref} produced {probs.shape[1]} scores per row "
                f"but joules.yaml names {c} labels {list(self.labels)}"
            )
        return probs.astype(np.float32, copy=False)

    # -- input checks ----------------------------------------------------------------------------

    def _texts_from(self, inputs: Any) -> list[str]:
        field_name = self.spec.preprocess.text_field
        if isinstance(inputs, str) or not isinstance(inputs, Sequence):
            raise InputError(f"expected a list of texts, got {type(inputs).__name__}")
        texts = []
        for i, item in enumerate(inputs):
            if isinstance(item, Mapping):
                if field_name not in item:
                    raise InputError(f"instance {i} has no {field_name!r} field (fields: {sorted(item)})")
                item = item[field_name]
            texts.append(item)
        return texts

    def _check_tensors(self, tensors: Mapping[str, Any]) -> dict[str, np.ndarray]:
        want = self.executor.inputs
        missing = sorted(set(want) - set(tensors))
        extra = sorted(set(tensors) - set(want))
        if missing or extra:
            raise InputError(f"model {self.ref} takes inputs {sorted(want)}; missing {missing}, unknown {extra}")
        feeds: dict[str, np.ndarray] = {}
        rows = None
        for name, meta in want.items():
            try:
                arr = np.asarray(tensors[name], dtype=self._dtypes[name])
            except (TypeError, ValueError) as e:
                raise InputError(f"input {name!r} cannot be read as {np.dtype(self._dtypes[name]).name}: {e}") from None
            if arr.ndim != len(meta.shape):
                raise InputError(
                    f"input {name!r} must have {len(meta.shape)} dimensions {meta.shape}, got shape {list(arr.shape)}"
                )
            for axis, (got, dim) in enumerate(zip(arr.shape, meta.shape, strict=True)):
                if isinstance(dim, int) and dim > 0 and axis > 0 and got != dim:
                    raise InputError(f"input {name!r} dimension {axis} must be {dim}, got shape {list(arr.shape)}")
            if arr.shape[0] == 0:
                raise InputError("empty batch: send at least one row")
            if rows is not None and arr.shape[0] != rows:
                raise InputError(f"inputs disagree on the number of rows: {name!r} has {arr.shape[0]}, others {rows}")
            rows = arr.shape[0]
            feeds[name] = arr
        return feeds


def _check_texts(texts: Any) -> None:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise InputError(f"expected a list of texts, got {type(texts).__name__}")
    if len(texts) == 0:
        raise InputError("empty batch: send at least one text")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"text {i} must be a string, got {type(t).__name__} ({str(t)[:40]!r})")
