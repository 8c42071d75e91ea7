"""``GroupSupervisor``: restarts a tensor-parallel engine whose rank died.

A dead rank cannot be replaced alone (the others' collectives wait for it), so
the whole group is restarted: every request in flight has already ended with
``EngineUnavailableError`` (503) and new ones get it too until the new group
has loaded (``Engine.healthy`` is False meanwhile, so readiness is false).

Restarts back off: the first one waits ``delay_s``, each one that follows
within ``stable_s`` of the last waits twice as long (up to ``max_delay_s``),
so a rank that is killed again at once (the kernel's OOM killer under a cap
set too low) does not turn into a busy restart loop. After ``max_restarts``
such restarts in a row the supervisor gives up and the engine stays down
(503, not ready) until an operator restarts the server.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from joules.errors import ConfigError, JoulesError

log = logging.getLogger("joules.parallel")


class Restartable(Protocol):
    """What the supervisor needs of an engine (``joules.runtime.generation.Engine``)."""

    name: str

    @property
    def healthy(self) -> bool: ...

    @property
    def unhealthy_reason(self) -> str | None: ...

    @property
    def closed(self) -> bool: ...

    def restart(self, reason: str = ...) -> None: ...


@dataclass(frozen=True, kw_only=True)
class RestartPolicy:
    delay_s: float = 5.0  # before the first restart: lets clients see the 503 and readiness drop
    max_delay_s: float = 60.0
    stable_s: float = 120.0  # a group up this long resets the back-off
    max_restarts: int = 5  # in a row (each within stable_s of the last); then the engine stays down
    poll_s: float = 0.2  # how often health is read (a rank's death is seen within this)

    def __post_init__(self) -> None:
        for name in ("delay_s", "max_delay_s", "stable_s", "poll_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                raise ConfigError(f"restart policy {name} must be a number >= 0, got {v!r}")
        if isinstance(self.max_restarts, bool) or not isinstance(self.max_restarts, int) or self.max_restarts < 0:
            raise ConfigError(f"restart policy max_restarts must be a whole number >= 0, got {self.max_restarts!r}")


class GroupSupervisor:
    """A daemon thread that restarts ``engine`` when it turns unhealthy (see the module doc)."""

    def __init__(self, engine: Restartable, policy: RestartPolicy | None = None) -> None:
        self.engine = engine
        self.policy = policy or RestartPolicy()
        self.restarts = 0  # done since the supervisor started
        self.gave_up: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"joules-tp-supervisor-{engine.name}", daemon=True)

    def start(self) -> GroupSupervisor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()

    def _run(self) -> None:
        p = self.policy
        in_a_row, last_restart = 0, float("-inf")
        while not self._stop.wait(p.poll_s):
            if self.engine.closed:
                return
            if self.engine.healthy:
                continue
            why = self.engine.unhealthy_reason or "unknown"
            if time.monotonic() - last_restart > p.stable_s:
                in_a_row = 0
            if in_a_row >= p.max_restarts:
                self.gave_up = why
                log.error(
                    "engine %s: %s; gave up after %d restarts in a row: it stays unavailable (503) until the "
                    "server is restarted",
                    self.engine.name,
                    why,
                    in_a_row,
                )
                return
            delay = min(p.max_delay_s, p.delay_s * 2**in_a_row)
            log.warning("engine %s: %s; restarting the tensor-parallel group in %.0f s", self.engine.name, why, delay)
            if self._stop.wait(delay) or self.engine.closed:
                return
            in_a_row += 1
            last_restart = time.monotonic()
            try:
                self.engine.restart(f"restarting after: {why}")
            except JoulesError as e:  # the group did not come back: counted, tried again after a longer wait
                log.error("engine %s: the restart failed: %s", self.engine.name, e)
                continue
            self.restarts += 1
            log.warning("engine %s: the tensor-parallel group is back (restart %d)", self.engine.name, self.restarts)
