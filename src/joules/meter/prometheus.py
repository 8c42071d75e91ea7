"""Prometheus counters of cost, by model and version, for the online server's registry.

Exposed as ``joules_energy_joules_total``, ``joules_cost_usd_total`` and
``joules_co2_grams_total`` (prometheus_client adds ``_total`` to counters).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

from joules.meter.cost import Cost, CostModel
from joules.meter.energy import Measurement


class CostCounters:
    def __init__(
        self, registry: CollectorRegistry, *, method: str = "modelled or measured, per X-Joules-Energy-Method"
    ) -> None:
        mv = ["model", "version"]
        self.energy = Counter(
            "joules_energy_joules", f"Energy of model calls in joules ({method})", mv, registry=registry
        )
        self.usd = Counter(
            "joules_cost_usd", "Cost of model calls in US dollars (instance price x CPU share)", mv, registry=registry
        )
        self.co2 = Counter(
            "joules_co2_grams",
            "CO2-equivalent of model calls in grams (energy x grid intensity)",
            mv,
            registry=registry,
        )

    def add(self, model: str, version: str, cost: Cost) -> None:
        self.energy.labels(model, version).inc(cost.energy_j)
        self.usd.labels(model, version).inc(cost.usd)
        self.co2.labels(model, version).inc(cost.co2_g)

    def call_observer(self, model: str, version: str, prices: CostModel) -> Callable[[int, Measurement], None]:
        """An observer of model calls ``(rows, measurement)`` that adds each call's cost."""
        energy = self.energy.labels(model, version)
        usd = self.usd.labels(model, version)
        co2 = self.co2.labels(model, version)

        def observe(rows: int, m: Measurement) -> None:
            c = prices.price(m)
            energy.inc(c.energy_j)
            usd.inc(c.usd)
            co2.inc(c.co2_g)

        return observe
