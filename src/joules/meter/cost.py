"""From a measurement to its price: joules, dollars and grams of CO2.

- Dollars: the instance costs ``price_per_hour`` for ``vcpus`` x 3,600
  CPU-seconds of capacity, so work that used ``cpu_s`` CPU-seconds costs
  ``price_per_hour x cpu_s / (vcpus x 3600)``. This is the price at full
  utilisation; an idle instance still costs its hourly price, which no request
  is charged for.
- CO2: ``energy_j / 3.6e6`` kWh times the grid's intensity in g/kWh (``grid.py``).

``Cost`` is what a request, a job or a projection reports; the online server
puts it in response headers and V2 ``parameters`` and adds it to counters.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from joules.errors import ConfigError
from joules.meter.energy import MODELLED, Measurement

J_PER_KWH = 3.6e6

# Response headers and V2 response ``parameters`` keys.
HEADER_ENERGY = "X-Joules-Energy-J"
HEADER_USD = "X-Joules-Cost-USD"
HEADER_CO2 = "X-Joules-CO2-g"
HEADER_METHOD = "X-Joules-Energy-Method"
_SUMMED = ("energy_j", "usd", "co2_g", "cpu_s", "wall_s")


@dataclass(frozen=True, kw_only=True)
class Cost:
    energy_j: float = 0.0
    usd: float = 0.0
    co2_g: float = 0.0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    method: str = MODELLED
    how: str = ""

    @property
    def is_zero(self) -> bool:
        return not self.how and not any(getattr(self, k) for k in _SUMMED)

    def __add__(self, other: Cost) -> Cost:
        if other.is_zero:
            return self
        if self.is_zero:
            return other
        return Cost(
            **{k: getattr(self, k) + getattr(other, k) for k in _SUMMED},
            method=self.method if self.method == other.method else MODELLED,
            how=self.how if self.how == other.how else "several methods (see the parts)",
        )

    def scaled(self, share: float) -> Cost:
        """This cost times ``share`` (a part of it: one of several rows answered by one computation)."""
        return Cost(
            **{k: getattr(self, k) * share for k in _SUMMED},
            method=self.method,
            how=self.how,
        )

    def headers(self) -> dict[str, str]:
        """HTTP response headers for one request's cost."""
        return {
            HEADER_ENERGY: f"{self.energy_j:.6g}",
            HEADER_USD: f"{self.usd:.6g}",
            HEADER_CO2: f"{self.co2_g:.6g}",
            HEADER_METHOD: self.method,
        }

    def parameters(self) -> dict[str, Any]:
        """Keys for the Open Inference Protocol V2 response ``parameters`` object."""
        return {
            "energy_j": self.energy_j,
            "cost_usd": self.usd,
            "co2_g": self.co2_g,
            "energy_method": self.method,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "energy_j": self.energy_j,
            "usd": self.usd,
            "co2_g": self.co2_g,
            "cpu_s": self.cpu_s,
            "wall_s": self.wall_s,
            "method": self.method,
            "how": self.how,
        }


@dataclass(frozen=True, kw_only=True)
class CostModel:
    """Prices measurements: an instance's price per hour and vCPUs, a grid's carbon intensity."""

    price_per_hour: float
    vcpus: int
    region: str
    grid_g_per_kwh: float

    def __post_init__(self) -> None:
        if not 0 <= self.price_per_hour < 10_000:
            raise ConfigError(f"price_per_hour must be between 0 and 10000 USD, got {self.price_per_hour!r}")
        if not 1 <= self.vcpus <= 100_000:
            raise ConfigError(f"vcpus must be a whole number >= 1, got {self.vcpus!r}")
        if not 0 <= self.grid_g_per_kwh < 5000:
            raise ConfigError(f"grid_g_per_kwh must be between 0 and 5000 g/kWh, got {self.grid_g_per_kwh!r}")

    @classmethod
    def from_settings(cls, settings: Any) -> CostModel:
        return cls(
            price_per_hour=settings.price_per_hour,
            vcpus=settings.vcpus,
            region=settings.region,
            grid_g_per_kwh=settings.grid_intensity,
        )

    def price(self, m: Measurement) -> Cost:
        return Cost(
            energy_j=m.energy_j,
            usd=self.price_per_hour * m.cpu_s / (self.vcpus * 3600.0),
            co2_g=m.energy_j / J_PER_KWH * self.grid_g_per_kwh,
            cpu_s=m.cpu_s,
            wall_s=m.wall_s,
            method=m.method,
            how=m.how,
        )

    def split(self, m: Measurement, work: Sequence[float]) -> list[Cost]:
        """One model call's cost divided among its requests by their work (tokens or rows)."""
        return [self.price(part) for part in m.split(work)]

    def split_by_owner(self, m: Measurement, owners: Sequence[Hashable], work: Sequence[float]) -> dict[Hashable, Cost]:
        """Per-row ``owners`` (request ids) and ``work``: each owner's cost of this call."""
        if len(owners) != len(work):
            raise ValueError(f"{len(owners)} owners for {len(work)} rows of work")
        totals: dict[Hashable, float] = {}
        for o, w in zip(owners, work, strict=True):
            totals[o] = totals.get(o, 0.0) + float(w)
        keys = list(totals)
        return dict(zip(keys, self.split(m, [totals[k] for k in keys]), strict=True))

    def describe(self) -> dict[str, Any]:
        return {
            "price_per_hour": self.price_per_hour,
            "vcpus": self.vcpus,
            "region": self.region,
            "grid_g_per_kwh": self.grid_g_per_kwh,
        }
