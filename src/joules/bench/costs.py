"""What one prediction of a model version costs, measured here (for ``joules cost``).

Each version runs the same texts through its Predictor in calls of
``batch_size`` rows; versions are interleaved round by round, so a burst of
load from another job on a shared machine hits them alike, and each version's
figure is the median of its rounds.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from joules.errors import BenchError
from joules.meter import ZERO, Cost, CostModel, Measurement, projection, savings
from joules.registry import Registry
from joules.settings import Settings


@dataclass(frozen=True, kw_only=True)
class VersionCost:
    name: str
    version: int
    stage: str
    per_prediction: Cost
    rounds: list[float]  # energy per prediction (J) of each round

    def report(self, per_day: float) -> dict[str, Any]:
        return {
            "model": self.name,
            "version": self.version,
            "stage": self.stage,
            **projection(self.per_prediction, per_day),
        }


def choose_versions(registry: Registry, ref: str, compare: str) -> list[Any]:
    """The version ``ref`` names first, then those ``compare`` adds: ``all``, ``none`` or ``1,3``."""
    primary = registry.get(ref)
    others = []
    if compare == "all":
        others = [mv for mv in registry.list(primary.name) if mv.version != primary.version]
    elif compare != "none":
        for part in compare.split(","):
            mv = registry.get(f"{primary.name}:{part.strip()}")
            if mv.version != primary.version and mv not in others:
                others.append(mv)
    return [primary, *others]


def measure_costs(
    refs: list[str],
    *,
    texts: list[str],
    settings: Settings,
    batch_size: int = 1,
    rounds: int = 3,
    threads: int = 0,
    progress: bool = True,
) -> list[VersionCost]:
    from joules.runtime import RuntimeOptions, load_predictor

    if batch_size < 1 or rounds < 1:
        raise BenchError(f"--batch-size and --rounds must be >= 1, got {batch_size} and {rounds}")
    registry = Registry(settings)
    options = RuntimeOptions(intra_op_threads=threads, max_batch_size=batch_size)
    predictors = [load_predictor(r, registry=registry, options=options, settings=settings) for r in refs]
    for p in predictors:
        if not p.is_text:
            raise BenchError(f"joules cost measures text models; {p.ref} takes tensors")
    prices = CostModel.from_settings(settings)
    per_round: list[list[Measurement]] = [[] for _ in predictors]
    for k in range(rounds):
        for i, p in enumerate(predictors):
            total = ZERO
            for start in range(0, len(texts), batch_size):
                total = total + p.predict_texts(texts[start : start + batch_size]).measurement
            per_round[i].append(total.scaled(1.0 / len(texts)))
            if progress:
                print(
                    f"round {k + 1}/{rounds} {p.ref}: {total.energy_j / len(texts):.4f} J per prediction",
                    file=sys.stderr,
                    flush=True,
                )
    out = []
    for p, ms in zip(predictors, per_round, strict=True):
        energies = [m.energy_j for m in ms]
        median = ms[int(np.argsort(energies)[len(ms) // 2])]
        mv = registry.get(p.ref)
        out.append(
            VersionCost(
                name=mv.name,
                version=mv.version,
                stage=str(mv.stage),
                per_prediction=prices.price(median),
                rounds=energies,
            )
        )
    return out


def cost_report(
    costs: list[VersionCost], *, per_day: float, settings: Settings, meta: dict[str, Any]
) -> dict[str, Any]:
    """The primary version's projection at the top level; every version and its savings beside it."""
    reports = [c.report(per_day) for c in costs]
    primary = reports[0]
    out = dict(primary)
    out["settings"] = settings.pricing()
    out["measurement"] = meta | {"rounds_j": {f"{c.name}:{c.version}": c.rounds for c in costs}}
    if len(reports) > 1:
        out["versions"] = reports
        out["savings_vs_primary"] = {f"{r['model']}:{r['version']}": savings(primary, r) for r in reports[1:]}
    return out


def sample_texts(ref: str, data: Path | None, samples: int, seed: int = 0) -> list[str]:
    from joules.bench.samples import load_texts

    texts = load_texts(data, ref)
    if samples < len(texts):
        idx = np.random.default_rng(seed).choice(len(texts), size=samples, replace=False)
        texts = [texts[i] for i in sorted(idx)]
    return texts
