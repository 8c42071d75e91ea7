"""Fake clocks and power readings: the only fakes the meter tests use."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class FakeClock:
    """Time, per-thread CPU and machine busy time that a test moves by hand."""

    scope: str = "fake threads"
    now: float = 100.0
    caller_cpu: float = 0.0
    native: dict[int, float] = field(default_factory=dict)
    busy: float = 0.0

    def wall(self) -> float:
        return self.now

    def thread_cpu(self) -> float:
        return self.caller_cpu

    def native_threads(self) -> dict[int, float]:
        return dict(self.native)

    def machine_busy(self) -> float:
        return self.busy


@dataclass
class FakeCounter:
    """A cumulative energy counter (RAPL or NVML) read as joules."""

    name: str
    kind: Literal["cpu", "gpu"]
    joules: float = 0.0

    def read_j(self) -> float:
        return self.joules
