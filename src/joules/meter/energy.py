"""Energy of model calls.

``EnergyMeter.start()`` / ``stop(started)`` bracket one model call and return a
``Measurement``: CPU seconds of the threads that did the work (``clocks.py``),
wall seconds, and joules, each figure labelled ``measured`` or ``modelled``
with a sentence saying how.

- CPU energy is measured from RAPL when readable: the package (and DRAM)
  energy during the call times this call's share of the machine's busy CPU
  time (other processes' work is theirs). Otherwise it is modelled as
  ``cpu_s x watts_per_core + wall_share_s x static_watts``: busy CPU-seconds
  at the power of one busy hardware thread (``hardware.py``), plus the
  instance's static power (memory, idle) for the call's share of wall time.
- GPU energy is measured from NVML when present, shared among overlapping calls
  like the static power.

Calls may overlap (several batcher threads, several models): the native worker
threads' CPU time and the wall time are settled in a process-wide ledger and
split equally among the calls in progress, so the parts add up to the whole.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from joules.errors import ConfigError
from joules.hardware import detect_cpu_power, detect_static_watts
from joules.meter.clocks import CpuClock, default_clock
from joules.meter.counters import EnergyCounter, detect_counters

MODELLED = "modelled"
MEASURED = "measured"
MIXED = "several methods (see the parts)"


@dataclass(frozen=True)
class Measurement:
    cpu_s: float
    wall_s: float
    energy_j: float
    method: str = MODELLED
    how: str = ""
    static_j: float = 0.0  # the part of energy_j charged for static power

    @property
    def is_zero(self) -> bool:
        return self.cpu_s == 0 and self.wall_s == 0 and self.energy_j == 0 and not self.how

    def __add__(self, other: Measurement) -> Measurement:
        if other.is_zero:
            return self
        if self.is_zero:
            return other
        return Measurement(
            self.cpu_s + other.cpu_s,
            self.wall_s + other.wall_s,
            self.energy_j + other.energy_j,
            self.method if self.method == other.method else MODELLED,
            self.how if self.how == other.how else MIXED,
            self.static_j + other.static_j,
        )

    def scaled(self, share: float) -> Measurement:
        # The constructor, not dataclasses.replace: a generation step splits one measurement per sequence.
        return Measurement(
            self.cpu_s * share, self.wall_s * share, self.energy_j * share, self.method, self.how, self.static_j * share
        )

    @staticmethod
    def of_shares(parts: Iterable[tuple[Measurement, float]]) -> Measurement:
        """``m1.scaled(w1) + m2.scaled(w2) + ...`` in one pass, without the objects in between (a generation
        sequence keeps one (step's measurement, its share) pair a step and is priced once, at its end)."""
        cpu = wall = energy = static = 0.0
        method: str | None = None
        how: str | None = None
        for m, w in parts:
            c, t, j = m.cpu_s * w, m.wall_s * w, m.energy_j * w
            if c == 0 and t == 0 and j == 0 and not m.how:  # a zero part: + skips it
                continue
            cpu += c
            wall += t
            energy += j
            static += m.static_j * w
            method = m.method if method is None or method == m.method else MODELLED
            how = m.how if how is None or how == m.how else MIXED
        if method is None or how is None:
            return ZERO
        return Measurement(cpu, wall, energy, method, how, static)

    def split(self, work: Sequence[float]) -> list[Measurement]:
        """This call's figures divided among its requests by their share of the work (tokens or rows)."""
        if any(w < 0 for w in work):
            raise ValueError(f"work shares must be >= 0, got {list(work)}")
        total = float(sum(work))
        if not work:
            return []
        if total == 0:
            return [self.scaled(1.0 / len(work)) for _ in work]
        return [self.scaled(w / total) for w in work]


ZERO = Measurement(0.0, 0.0, 0.0)


def modelled(cpu_s: float, wall_s: float, *, watts_per_core: float, static_watts: float, how: str = "") -> Measurement:
    """The energy model, written once: busy CPU-seconds at the power of one busy hardware thread
    (hardware.py) plus the instance's static power for the wall time charged to this work."""
    static_j = wall_s * static_watts
    return Measurement(cpu_s, wall_s, cpu_s * watts_per_core + static_j, MODELLED, how, static_j)


@dataclass(eq=False)
class _Call:
    tid: int
    thread_cpu0: float
    wall0: float
    counters0: tuple[float, ...]
    machine0: float
    native_cpu_s: float = 0.0  # settled share of the native threads' CPU time
    wall_share_s: float = 0.0  # settled share of wall time


@dataclass(eq=False)
class WorkLedger:
    """Splits the native threads' CPU time and the wall time among the calls in progress."""

    clock: CpuClock
    active: list[_Call] = field(default_factory=list)
    last_native: dict[int, float] = field(default_factory=dict)
    last_wall: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _settle(self) -> None:
        now = self.clock.wall()
        native = self.clock.native_threads()
        callers = {c.tid for c in self.active}
        if self.active:
            # A thread first seen now is counted from now on: it may be a Python thread caught while
            # starting or ending (then absent from threading.enumerate()), whose past is not this work's.
            last = self.last_native
            cpu = sum(max(0.0, v - last[t]) for t, v in native.items() if t in last and t not in callers)
            n = len(self.active)
            for c in self.active:
                c.native_cpu_s += cpu / n
                c.wall_share_s += max(0.0, now - self.last_wall) / n
        self.last_native = native
        self.last_wall = now

    def enter(self, call: _Call) -> None:
        with self.lock:
            self._settle()
            self.active.append(call)

    def leave(self, call: _Call) -> None:
        with self.lock:
            self._settle()
            self.active.remove(call)


_LEDGERS: dict[int, WorkLedger] = {}
_LEDGERS_LOCK = threading.Lock()


def _shared_ledger(clock: CpuClock) -> WorkLedger:
    # One ledger per clock object kind, shared by every meter of the process.
    with _LEDGERS_LOCK:
        key = id(type(clock))
        if key not in _LEDGERS:
            _LEDGERS[key] = WorkLedger(clock)
        return _LEDGERS[key]


class EnergyMeter:
    """Measures or models the energy of model calls; safe to use from several threads."""

    def __init__(
        self,
        watts_per_core: float | None = None,
        *,
        static_watts: float | None = None,
        counters: Sequence[EnergyCounter] | None = None,
        clock: CpuClock | None = None,
    ) -> None:
        self.watts_per_core = float(detect_cpu_power().watts_per_thread if watts_per_core is None else watts_per_core)
        self.static_watts = float(detect_static_watts() if static_watts is None else static_watts)
        if not 0 < self.watts_per_core < 1000:
            raise ConfigError(f"watts_per_core must be between 0 and 1000 W, got {self.watts_per_core!r}")
        if not 0 <= self.static_watts < 100_000:
            raise ConfigError(f"static_watts must be between 0 and 100000 W, got {self.static_watts!r}")
        self.counters = list(detect_counters() if counters is None else counters)
        self.clock = clock or default_clock()
        # A meter with its own clock (tests) gets its own ledger; real clocks share one per process.
        self.ledger = WorkLedger(self.clock) if clock is not None else _shared_ledger(self.clock)
        self.cpu_counters = [i for i, c in enumerate(self.counters) if c.kind == "cpu"]
        self.gpu_counters = [i for i, c in enumerate(self.counters) if c.kind == "gpu"]
        self.method = MEASURED if self.cpu_counters else MODELLED
        self._calls: dict[int, _Call] = {}
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        self.how = self._how()

    @classmethod
    def from_settings(cls, settings: object) -> EnergyMeter:
        """A meter with ``watts_per_core`` and ``static_watts`` from :class:`joules.settings.Settings`."""
        return cls(getattr(settings, "watts_per_core", None), static_watts=getattr(settings, "static_watts", None))

    def _how(self) -> str:
        cpu = [self.counters[i].name for i in self.cpu_counters]
        gpu = [self.counters[i].name for i in self.gpu_counters]
        if cpu:
            text = f"measured: {', '.join(cpu)} energy x this work's share of the machine's busy CPU time"
        else:
            text = (
                f"modelled: CPU-seconds of {self.clock.scope} x {self.watts_per_core:g} W per busy thread"
                f" + {self.static_watts:g} W static x wall-seconds share"
            )
        if gpu:
            text += f"; GPU measured: {', '.join(gpu)}"
        return text

    def start(self) -> tuple[float, float]:
        """Begin a call; pass the returned token to ``stop``.

        The token is (call number, wall start), a pair of floats, as callers have always stored it.
        """
        call = _Call(
            tid=threading.get_native_id(),
            thread_cpu0=self.clock.thread_cpu(),
            wall0=self.clock.wall(),
            counters0=tuple(c.read_j() for c in self.counters),
            machine0=self.clock.machine_busy() if self.cpu_counters else 0.0,
        )
        self.ledger.enter(call)
        with self._lock:
            number = next(self._numbers)
            self._calls[number] = call
        return float(number), call.wall0

    def stop(self, started: tuple[float, float]) -> Measurement:
        with self._lock:
            call = self._calls.pop(int(started[0]), None)
        if call is None:
            raise ValueError(f"stop({started!r}): not a token from this meter's start(), or stopped twice")
        return self._stop(call)

    def _stop(self, started: _Call) -> Measurement:
        self.ledger.leave(started)
        wall = max(0.0, self.clock.wall() - started.wall0)
        cpu = max(0.0, self.clock.thread_cpu() - started.thread_cpu0) + started.native_cpu_s
        wall_share = min(started.wall_share_s, wall) if wall > 0 else 0.0
        counters1 = [c.read_j() for c in self.counters]
        deltas = [max(0.0, b - a) for a, b in zip(started.counters0, counters1, strict=True)]
        static_j = 0.0
        if self.cpu_counters:
            machine = max(0.0, self.clock.machine_busy() - started.machine0)
            share = 1.0 if machine <= cpu else cpu / machine
            energy = sum(deltas[i] for i in self.cpu_counters) * share
        else:
            m = modelled(cpu, wall_share, watts_per_core=self.watts_per_core, static_watts=self.static_watts)
            static_j, energy = m.static_j, m.energy_j
        if self.gpu_counters and wall > 0:
            energy += sum(deltas[i] for i in self.gpu_counters) * (wall_share / wall)
        return Measurement(cpu, wall, energy, self.method, self.how, static_j)
