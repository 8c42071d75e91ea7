"""Measure every variant in one run, interleaved, so machine noise does not favour one.

Quality is measured once per split (validation for selection, test for the
report): F1 with a bootstrap 95 % interval, accuracy, ROC AUC, and against the
original model the predictions and actions that flip plus McNemar's paired
test. Speed is measured in rounds; each round visits every variant in a
rotated order, timing the test split at batch 32 (the Predictor sorts rows by
length) and a slice of it one row at a time. Figures are medians over rounds
(throughput, energy) or percentiles over all calls (latency). The batch-1
calls double as the batch-dependence check: a row predicted alone should get
the probabilities it got inside its batch.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from joules.bundle import Bundle, SplitDataset
from joules.meter import EnergyMeter, Measurement
from joules.optimize.presets import Measure
from joules.optimize.select import Score
from joules.quality import classification_metrics, mcnemar


class Engine(Protocol):
    def predict(self, texts: Sequence[str]) -> tuple[np.ndarray, list[str | None], Measurement]: ...


class OnnxEngine:
    """A bundle run by the Predictor, as it would be served."""

    def __init__(self, bundle: Bundle, *, batch_size: int, meter: EnergyMeter, threads: int = 0) -> None:
        from joules.runtime import Predictor, RuntimeOptions
        from joules.runtime.admission import text_view

        options = RuntimeOptions(max_batch_size=batch_size, intra_op_threads=threads)
        # An e-mail bundle's dataset holds what its converter made of each message: measure it on those.
        self.predictor = Predictor(text_view(bundle), options=options, meter=meter)

    def predict(self, texts: Sequence[str]) -> tuple[np.ndarray, list[str | None], Measurement]:
        b = self.predictor.predict_texts(texts, record=False)
        return b.probabilities, b.actions, b.measurement


class TorchEngine:
    """The model run the usual way: PyTorch eager fp32, same tokenizer, same length-sorted batches."""

    def __init__(self, bundle: Bundle, *, batch_size: int, meter: EnergyMeter) -> None:
        from joules.optimize.passes.trainable import load_trainable
        from joules.runtime.preprocess import TextPreprocessor

        self.model = load_trainable(bundle, "the PyTorch reference")
        names = [i.name for i in bundle.spec.inputs]
        self.pre = TextPreprocessor.from_spec(bundle.tokenizer_path, bundle.spec.preprocess, names)
        self.batch_size = batch_size
        self.meter = meter

    def predict(self, texts: Sequence[str]) -> tuple[np.ndarray, list[str | None], Measurement]:
        from joules.train.finetune import predict_logits

        started = self.meter.start()
        logits = predict_logits(self.model, self.pre, list(texts), batch_size=self.batch_size)
        m = self.meter.stop(started)
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True), [None] * len(texts), m


@dataclass
class Candidate:
    """One model measured by the run: the original, a variant, or a reference engine."""

    name: str
    kind: str  # "original", "variant" or "reference"
    passes: list[str] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    bundle: Bundle | None = None
    engine: Engine | None = None
    quality: dict[str, dict[str, Any]] = field(default_factory=dict)
    probabilities: dict[str, np.ndarray] = field(default_factory=dict)
    actions: dict[str, list[str | None]] = field(default_factory=dict)
    speed: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    size_mb: float | None = None  # model.onnx on disk (the variants' directories are temporary)
    eval_seconds: float = 0.0  # how long scoring one split took (to budget the final measurement)

    def __post_init__(self) -> None:
        if self.bundle is not None and self.size_mb is None:
            self.size_mb = self.bundle.model_path.stat().st_size / 2**20

    def score(self) -> Score:
        """What selection looks at: validation F1 and the measured speed (after measure_speed)."""
        return Score(
            name=self.name,
            validation_f1=self.quality["validation"]["f1"],
            throughput=self.speed["throughput_msg_s"],
            latency_p50_ms=self.speed["latency_ms"]["p50"],
            energy_per_1000_j=self.speed["energy_j_per_1000"],
            batch_dependence=self.speed.get("batch_dependence", {}).get("max_abs", 0.0),
        )


def measure_quality(
    c: Candidate, dataset: SplitDataset, splits: Sequence[str], *, original: Candidate | None, bootstrap: int
) -> None:
    """Fill ``c.quality[split]`` (and keep its probabilities and actions) for each split not yet measured."""
    assert c.engine is not None and c.bundle is not None
    labels = c.bundle.spec.labels
    positive = labels.index(c.bundle.spec.postprocess.positive)
    for split in splits:
        if split in c.quality:
            continue
        data = dataset[split]
        y = np.asarray(data.label_indices(labels))
        probs, actions, _ = c.engine.predict(data.texts)
        c.probabilities[split], c.actions[split] = probs, actions
        m = classification_metrics(y, probs, positive, bootstrap=bootstrap)
        if original is not None and split in original.probabilities:
            ref, ref_actions = original.probabilities[split], original.actions[split]
            pred, ref_pred = probs.argmax(1), ref.argmax(1)
            m["prediction_flips"] = int(np.sum(pred != ref_pred))
            m["action_flips"] = int(sum(a != b for a, b in zip(actions, ref_actions, strict=True)))
            test = mcnemar(ref_pred == y, pred == y)
            m["mcnemar_vs_original"] = {
                "only_original_right": test["only_a"],
                "only_variant_right": test["only_b"],
                "p_value": test["p_value"],
            }
            m["max_abs_diff_vs_original"] = float(np.max(np.abs(probs[:, positive] - ref[:, positive])))
        c.quality[split] = m


def measure_speed(
    candidates: Sequence[Candidate], texts: Sequence[str], cfg: Measure, *, seed: int = 0, progress: bool = False
) -> None:
    """Interleaved throughput (batch ``cfg.batch_size``) and batch-1 latency of every candidate."""
    from tqdm import tqdm

    n = len(texts)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    wanted = cfg.rounds * cfg.latency_rows
    latency_rows = np.resize(order, wanted) if n else order
    runs: dict[str, list[tuple[float, float]]] = {c.name: [] for c in candidates}
    latencies: dict[str, list[float]] = {c.name: [] for c in candidates}
    single: dict[str, list[tuple[int, np.ndarray]]] = {c.name: [] for c in candidates}
    bar = tqdm(
        total=cfg.rounds * len(candidates), desc="measure", unit="variant", file=sys.stderr, disable=not progress
    )
    for r in range(cfg.rounds):
        shift = r % len(candidates)
        rotated = [*candidates[shift:], *candidates[:shift]]
        rows = latency_rows[r * cfg.latency_rows : (r + 1) * cfg.latency_rows]
        for c in rotated:
            assert c.engine is not None
            _, _, m = c.engine.predict(texts)
            runs[c.name].append((n / m.wall_s if m.wall_s > 0 else float("inf"), m.energy_j / n * 1000))
            for i in rows:
                t0 = time.perf_counter()
                p, _, _ = c.engine.predict([texts[i]])
                latencies[c.name].append((time.perf_counter() - t0) * 1000)
                single[c.name].append((int(i), p[0]))
            bar.update(1)
    bar.close()
    for c in candidates:
        thr = [t for t, _ in runs[c.name]]
        energy = [e for _, e in runs[c.name]]
        lat = np.asarray(latencies[c.name])
        c.speed = {
            "throughput_msg_s": float(np.median(thr)),
            "throughput_runs": [round(t, 1) for t in thr],
            "energy_j_per_1000": float(np.median(energy)),
            "latency_ms": {
                "p50": float(np.percentile(lat, 50)),
                "p99": float(np.percentile(lat, 99)),
                "calls": len(lat),
            },
        }
        batched = c.probabilities.get("test")
        if batched is not None and c.bundle is not None:
            pos = c.bundle.spec.labels.index(c.bundle.spec.postprocess.positive)
            diffs = [abs(float(p[pos]) - float(batched[i, pos])) for i, p in single[c.name]]
            flips = sum(int(np.argmax(p) != np.argmax(batched[i])) for i, p in single[c.name])
            c.speed["batch_dependence"] = {"max_abs": max(diffs), "label_flips": flips, "rows": len(diffs)}


def measure_memory(candidates: Sequence[Candidate], texts: Sequence[str], cfg: Measure) -> None:
    """Peak RSS of each candidate with a bundle, one fresh process each (memory.py)."""
    from joules.optimize.memory import probe

    if cfg.memory_rows == 0:
        return
    longest = sorted(texts, key=len, reverse=True)[: cfg.memory_rows]
    with tempfile.TemporaryDirectory(prefix="joules-memory-") as tmp:
        path = Path(tmp) / "texts.json"
        path.write_text(json.dumps(longest), encoding="utf-8")
        for c in candidates:
            if c.bundle is not None:
                c.memory = probe(c.bundle.path, path, cfg.batch_size)
