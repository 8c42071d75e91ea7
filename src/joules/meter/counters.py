"""Hardware energy counters: RAPL (CPU package, DRAM) and NVML (NVIDIA GPU).

Each counter reads a cumulative energy in joules; a meter takes differences
around a model call.

- RAPL through the powercap sysfs interface: one zone per package,
  ``/sys/class/powercap/intel-rapl:N/energy_uj`` (microjoules, wrapping at
  ``max_energy_range_uj``), with a ``dram`` subzone on servers that have one
  (Linux Documentation/power/powercap/powercap.rst). Kernels since 5.10 make
  ``energy_uj`` readable by root only, and virtual machines rarely expose it.
- NVML's ``nvmlDeviceGetTotalEnergyConsumption``: millijoules since the driver
  was last reloaded, Volta and newer (NVML API reference). The Python binding
  is the ``nvidia-ml-py`` package (module ``pynvml``), imported only if present.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Literal, Protocol

log = logging.getLogger(__name__)

POWERCAP = Path("/sys/class/powercap")


class EnergyCounter(Protocol):
    name: str
    kind: Literal["cpu", "gpu"]

    def read_j(self) -> float:
        """Cumulative joules, monotonic (wraps are unfolded)."""
        ...


class _Unwrapped:
    """Unfolds a counter that wraps at ``limit``."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.last: float | None = None
        self.offset = 0.0
        self.lock = threading.Lock()

    def __call__(self, raw: float) -> float:
        with self.lock:
            if self.last is not None and raw < self.last:
                self.offset += self.limit
            self.last = raw
            return self.offset + raw


class RaplCounter:
    """Sum of the package (and DRAM) zones under ``root``."""

    kind: Literal["cpu", "gpu"] = "cpu"

    def __init__(self, zones: list[Path]) -> None:
        self.zones = zones
        self.name = "RAPL " + "+".join(sorted({_zone_name(z) for z in zones}))
        self._unwrap = [_Unwrapped(_read_int(z / "max_energy_range_uj") or 2**32) for z in zones]

    def read_j(self) -> float:
        return (
            sum(u(float(_read_int(z / "energy_uj") or 0)) for z, u in zip(self.zones, self._unwrap, strict=True)) / 1e6
        )

    @classmethod
    def detect(cls, root: Path = POWERCAP) -> RaplCounter | None:
        zones = []
        for pkg in sorted(root.glob("intel-rapl:[0-9]*")):
            if pkg.name.count(":") != 1:
                continue
            zones.append(pkg)
            zones.extend(z for z in sorted(pkg.glob(f"{pkg.name}:[0-9]*")) if _zone_name(z) == "dram")
        readable = [z for z in zones if _read_int(z / "energy_uj") is not None]
        if not readable or len(readable) != len(zones):
            return None
        return cls(readable)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


def _zone_name(zone: Path) -> str:
    try:
        return (zone / "name").read_text(encoding="ascii").strip()
    except OSError:
        return zone.name


class NvmlCounter:
    """Total energy of the visible NVIDIA GPUs."""

    kind: Literal["cpu", "gpu"] = "gpu"

    def __init__(self, nvml: Any, handles: list[Any]) -> None:
        self.nvml = nvml
        self.handles = handles
        self.name = f"NVML ({len(handles)} GPU{'s' if len(handles) != 1 else ''})"

    def read_j(self) -> float:
        return sum(self.nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self.handles) / 1e3

    @classmethod
    def detect(cls) -> NvmlCounter | None:
        try:
            import pynvml
        except ImportError:
            return None
        try:
            pynvml.nvmlInit()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            for h in handles:
                pynvml.nvmlDeviceGetTotalEnergyConsumption(h)  # NotSupported before Volta
        except pynvml.NVMLError as e:
            log.debug("NVML energy counter unavailable: %s", e)
            return None
        return cls(pynvml, handles) if handles else None


def detect_counters() -> list[EnergyCounter]:
    """The energy counters this process can read (often none in a VM)."""
    found: list[EnergyCounter] = []
    rapl = RaplCounter.detect()
    if rapl is not None:
        found.append(rapl)
    nvml = NvmlCounter.detect()
    if nvml is not None:
        found.append(nvml)
    return found
