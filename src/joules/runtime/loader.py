"""Build a Predictor from a registry reference and the user's overrides."""

from __future__ import annotations

from pathlib import Path

from joules.decide import RuleSet
from joules.meter import CostModel, EnergyMeter
from joules.registry import Registry
from joules.runtime.options import RuntimeOptions
from joules.runtime.predictor import Predictor
from joules.settings import Settings, load_settings


def load_predictor(
    ref: str,
    *,
    registry: Registry | None = None,
    rules_file: str | Path | None = None,
    options: RuntimeOptions | None = None,
    settings: Settings | None = None,
) -> Predictor:
    """The Predictor for ``NAME`` (production) or ``NAME:VERSION``; ``rules_file`` overrides the bundle's rules."""
    settings = settings or (registry.settings if registry else load_settings())
    registry = registry or Registry(settings)
    mv = registry.get(ref)
    bundle = registry.load(f"{mv.name}:{mv.version}")
    rules = RuleSet.from_file(rules_file, bundle.spec.labels) if rules_file else None
    return Predictor(
        bundle,
        rules=rules,
        options=options,
        meter=EnergyMeter.from_settings(settings),
        prices=CostModel.from_settings(settings),
        version=mv.version,
    )
