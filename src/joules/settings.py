"""Where joules keeps its state and the few numbers it needs to price work.

Precedence, highest first: explicit arguments (CLI flags), environment
variables (``JOULES_*``), ``$JOULES_HOME/config.yaml``, the defaults below.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from joules.errors import ConfigError

DEFAULT_HOME = ".joules"

# Modelled power of one busy hardware thread. 300 W TDP / 64 threads of a
# 32-core Xeon Platinum 8375C (AWS m6i/c6i hosts; Intel ARK lists the 8375C at
# 300 W), about 4.7 W. A setting because the machine is rarely known.
DEFAULT_WATTS_PER_CORE = 4.7


def joules_home() -> Path:
    """``$JOULES_HOME`` or ``./.joules``."""
    return Path(os.environ.get("JOULES_HOME") or DEFAULT_HOME)


@dataclass(frozen=True, kw_only=True)
class Settings:
    home: Path = field(default_factory=joules_home)
    watts_per_core: float = DEFAULT_WATTS_PER_CORE

    def __post_init__(self) -> None:
        if not (0 < self.watts_per_core < 1000):
            raise ConfigError(
                f"watts_per_core must be between 0 and 1000 W, got {self.watts_per_core!r}; "
                "set it in $JOULES_HOME/config.yaml or JOULES_WATTS_PER_CORE"
            )

    @property
    def registry_path(self) -> Path:
        return self.home / "registry.db"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"


_ENV = {"watts_per_core": "JOULES_WATTS_PER_CORE"}


def load_settings(**overrides: Any) -> Settings:
    """Settings from config.yaml, the environment and ``overrides`` (None values ignored)."""
    home = Path(overrides.pop("home", None) or joules_home())
    values: dict[str, Any] = {}
    config = home / "config.yaml"
    if config.exists():
        try:
            loaded = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{config} is not valid YAML: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"{config} must hold a mapping of settings, got {type(loaded).__name__}")
        known = {f.name for f in fields(Settings)} - {"home"}
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise ConfigError(f"{config}: unknown settings {unknown}; known settings are {sorted(known)}")
        values.update(loaded)
    for name, var in _ENV.items():
        if os.environ.get(var):
            values[name] = os.environ[var]
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        if "watts_per_core" in values:
            values["watts_per_core"] = float(values["watts_per_core"])
    except (TypeError, ValueError) as e:
        raise ConfigError(f"watts_per_core must be a number, got {values['watts_per_core']!r}") from e
    return replace(Settings(home=home), **values)
