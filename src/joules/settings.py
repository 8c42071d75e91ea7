"""Where joules keeps its state and the few numbers it needs to price work.

Precedence, highest first: explicit arguments (CLI flags), environment
variables (``JOULES_*``), ``$JOULES_HOME/config.yaml``, the defaults below.
``Settings.origin`` records where each pricing figure came from.

``config.yaml`` example::

    watts_per_core: 2.7      # power of one busy hardware thread (default: CPU TDP table)
    static_watts: 10         # memory + idle power of the instance (default: CCF coefficients)
    region: eu-west-3        # grid carbon intensity (grid.py); or grid_g_per_kwh: 56
    price_per_hour: 0.085    # the instance's price in USD
    vcpus: 2                 # the instance's vCPUs (default: this machine's)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from joules.errors import ConfigError

DEFAULT_HOME = ".joules"

# Modelled power of one busy hardware thread when the CPU is not in the TDP table
# (hardware.py): Cloud Carbon Footprint's average max watts per vCPU for AWS.
DEFAULT_WATTS_PER_CORE = 3.5

# AWS EC2 c6i.large (2 vCPU, 4 GiB), Linux on-demand in us-east-1: $0.085 per hour
# (aws.amazon.com/ec2/pricing/on-demand, 2024). A 2-vCPU instance like the development machine.
DEFAULT_PRICE_PER_HOUR = 0.085
DEFAULT_REGION = "world"


def joules_home() -> Path:
    """``$JOULES_HOME`` or ``./.joules``."""
    return Path(os.environ.get("JOULES_HOME") or DEFAULT_HOME)


def _detected_watts_per_core() -> float:
    from joules.hardware import detect_cpu_power

    return detect_cpu_power().watts_per_thread


def _detected_static_watts() -> float:
    from joules.hardware import detect_static_watts

    return detect_static_watts()


def _detected_vcpus() -> int:
    from joules.hardware import vcpus

    return vcpus()


@dataclass(frozen=True, kw_only=True)
class Settings:
    home: Path = field(default_factory=joules_home)
    watts_per_core: float = field(default_factory=_detected_watts_per_core)
    static_watts: float = field(default_factory=_detected_static_watts)
    region: str = DEFAULT_REGION
    grid_g_per_kwh: float | None = None  # overrides the region's table figure
    price_per_hour: float = DEFAULT_PRICE_PER_HOUR
    vcpus: int = field(default_factory=_detected_vcpus)
    origin: dict[str, str] = field(default_factory=dict, compare=False)  # setting -> where its value came from

    def __post_init__(self) -> None:
        fix = "set it in $JOULES_HOME/config.yaml, a JOULES_* environment variable or a flag"
        if isinstance(self.watts_per_core, bool) or not (0 < self.watts_per_core < 1000):
            raise ConfigError(f"watts_per_core must be between 0 and 1000 W, got {self.watts_per_core!r}; {fix}")
        if isinstance(self.static_watts, bool) or not (0 <= self.static_watts < 100_000):
            raise ConfigError(f"static_watts must be between 0 and 100000 W, got {self.static_watts!r}; {fix}")
        if isinstance(self.price_per_hour, bool) or not (0 <= self.price_per_hour < 10_000):
            raise ConfigError(f"price_per_hour must be between 0 and 10000 USD, got {self.price_per_hour!r}; {fix}")
        if isinstance(self.vcpus, bool) or not isinstance(self.vcpus, int) or self.vcpus < 1:
            raise ConfigError(f"vcpus must be a whole number >= 1, got {self.vcpus!r}; {fix}")
        if self.grid_g_per_kwh is not None and not (0 <= self.grid_g_per_kwh < 5000):
            raise ConfigError(f"grid_g_per_kwh must be between 0 and 5000 g/kWh, got {self.grid_g_per_kwh!r}; {fix}")
        if self.grid_g_per_kwh is None:
            self.grid_intensity  # noqa: B018 - an unknown region fails here, at load time

    @property
    def grid_intensity(self) -> float:
        """gCO2e per kWh: ``grid_g_per_kwh`` if set, else the region's figure."""
        if self.grid_g_per_kwh is not None:
            return self.grid_g_per_kwh
        from joules.grid import grid_intensity

        return grid_intensity(self.region)

    @property
    def registry_path(self) -> Path:
        return self.home / "registry.db"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    def pricing(self) -> dict[str, Any]:
        """The pricing settings and where each came from (for reports)."""
        names = ("watts_per_core", "static_watts", "region", "grid_g_per_kwh", "price_per_hour", "vcpus")
        out: dict[str, Any] = {n: getattr(self, n) for n in names}
        out["grid_g_per_kwh"] = self.grid_intensity
        out["origin"] = {n: self.origin.get(n, "default") for n in names}
        return out


_ENV = {
    "watts_per_core": "JOULES_WATTS_PER_CORE",
    "static_watts": "JOULES_STATIC_WATTS",
    "region": "JOULES_REGION",
    "grid_g_per_kwh": "JOULES_GRID_G_PER_KWH",
    "price_per_hour": "JOULES_PRICE_PER_HOUR",
    "vcpus": "JOULES_VCPUS",
}
_FLOATS = ("watts_per_core", "static_watts", "grid_g_per_kwh", "price_per_hour")


def _convert(values: dict[str, Any], origin: dict[str, str]) -> None:
    for name in _FLOATS:
        if name in values and values[name] is not None:
            v = values[name]
            try:
                if isinstance(v, bool):
                    raise TypeError
                values[name] = float(v)
            except (TypeError, ValueError):
                raise ConfigError(f"{name} must be a number, got {v!r} (from {origin.get(name, '?')})") from None
    if "vcpus" in values:
        v = values["vcpus"]
        try:
            if isinstance(v, bool) or float(v) != int(float(v)):
                raise ValueError
            values["vcpus"] = int(float(v))
        except (TypeError, ValueError):
            raise ConfigError(f"vcpus must be a whole number, got {v!r} (from {origin.get('vcpus', '?')})") from None
    if "region" in values and not isinstance(values["region"], str):
        raise ConfigError(f"region must be a name such as 'fr' or 'us-east-1', got {values['region']!r}")


def load_settings(**overrides: Any) -> Settings:
    """Settings from config.yaml, the environment and ``overrides`` (None values ignored)."""
    home = Path(overrides.pop("home", None) or joules_home())
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    config = home / "config.yaml"
    if config.exists():
        try:
            loaded = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{config} is not valid YAML: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"{config} must hold a mapping of settings, got {type(loaded).__name__}")
        known = {f.name for f in fields(Settings)} - {"home", "origin"}
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise ConfigError(f"{config}: unknown settings {unknown}; known settings are {sorted(known)}")
        values.update(loaded)
        origin.update({k: f"{config}" for k in loaded})
    for name, var in _ENV.items():
        if os.environ.get(var):
            values[name] = os.environ[var]
            origin[name] = f"environment {var}"
    given = {k: v for k, v in overrides.items() if v is not None}
    values.update(given)
    origin.update({k: "flag" for k in given})
    _convert(values, origin)
    if values.get("region") is not None and "grid_g_per_kwh" not in given and origin.get("region") == "flag":
        # A region given as a flag wins over a grid figure from the config or environment.
        values.pop("grid_g_per_kwh", None)
        origin.pop("grid_g_per_kwh", None)
    return replace(Settings(home=home), **values, origin=origin)
