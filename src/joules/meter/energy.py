"""Energy of model calls.

Until a power counter is read (RAPL, NVML), energy is modelled: the CPU time the
process spent during the call times the power of one busy hardware thread
(``watts_per_core``, a setting). Each figure says how it was obtained.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from joules.settings import DEFAULT_WATTS_PER_CORE

MODELLED = "modelled"
MEASURED = "measured"


@dataclass(frozen=True)
class Measurement:
    cpu_s: float
    wall_s: float
    energy_j: float
    method: str = MODELLED

    def __add__(self, other: Measurement) -> Measurement:
        method = self.method if self.method == other.method else MODELLED
        return Measurement(self.cpu_s + other.cpu_s, self.wall_s + other.wall_s, self.energy_j + other.energy_j, method)


ZERO = Measurement(0.0, 0.0, 0.0)


class EnergyMeter:
    """Times a piece of work in CPU and wall seconds and models its energy."""

    def __init__(self, watts_per_core: float = DEFAULT_WATTS_PER_CORE) -> None:
        self.watts_per_core = watts_per_core
        self.method = f"{MODELLED}: process CPU-seconds x {watts_per_core:g} W per busy core"

    def start(self) -> tuple[float, float]:
        return time.process_time(), time.perf_counter()

    def stop(self, started: tuple[float, float]) -> Measurement:
        cpu0, wall0 = started
        cpu = max(0.0, time.process_time() - cpu0)
        wall = max(0.0, time.perf_counter() - wall0)
        return Measurement(cpu, wall, cpu * self.watts_per_core, MODELLED)
