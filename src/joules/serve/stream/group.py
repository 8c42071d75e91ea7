"""Several consumers of one Redis consumer group from one command (``joules stream --consumers N``).

Each consumer is a process of its own (``joules stream`` with the same flags,
one consumer each): a model per process, no shared Python lock, and a consumer
that dies (even by SIGKILL) takes no other down. Exactly one outcome per
message still holds with one of them gone: what it had read but not answered
stays pending in the group, and the others claim it after ``--claim-idle-ms``
(``XAUTOCLAIM``); what it had answered is recorded by message id, so a claimed
message it had in fact answered is skipped, not answered twice
(``serve/stream/dedupe.py``).

The supervisor forwards SIGTERM and SIGINT to every consumer (each drains its
micro-batch and exits) and exits 0 only if every consumer exited 0; a consumer
that died otherwise is named on stderr and the exit code is 1.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from joules.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class GroupPlan:
    """The command line of each of ``consumers`` processes (argv after ``joules``)."""

    consumers: int
    argv: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        if self.consumers < 1:
            raise ConfigError(f"--consumers must be >= 1, got {self.consumers}")
        if len(self.argv) != self.consumers:
            raise ConfigError(f"{len(self.argv)} command lines for {self.consumers} consumers")


def member_argv(argv: Sequence[str], index: int) -> tuple[str, ...]:
    """``argv`` (``stream ...``) for consumer ``index``: without ``--consumers``, with its own ``--consumer``
    name (NAME-index when one was given; otherwise each process names itself HOST-PID) and its own
    ``--metrics-port`` (PORT + index)."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        flag, eq, value = arg.partition("=")
        if flag in ("--consumers", "--consumer", "--metrics-port"):
            value = value if eq else next(it, "")
            if flag == "--consumer":
                out += ["--consumer", f"{value}-{index}"]
            elif flag == "--metrics-port":
                out += ["--metrics-port", str(int(value) + index)]
            continue
        out.append(arg)
    return tuple(out)


def run_group(plan: GroupPlan, *, poll_s: float = 0.2) -> int:
    """Start every consumer, forward SIGTERM/SIGINT to them, wait for all; 0 only if all exited 0."""
    procs = [subprocess.Popen([sys.executable, "-m", "joules.cli.main", *a]) for a in plan.argv]
    stopping: list[int] = []

    def forward(sig: int, _frame: object) -> None:
        stopping.append(sig)
        for p in procs:
            if p.poll() is None:
                p.send_signal(sig)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    print(
        f"stream group: {plan.consumers} consumers, pids {', '.join(str(p.pid) for p in procs)}",
        file=sys.stderr,
        flush=True,
    )
    reported: set[int] = set()
    try:
        while any(p.poll() is None for p in procs):
            for i, p in enumerate(procs):
                if p.returncode is not None and p.returncode != 0 and i not in reported and not stopping:
                    reported.add(i)
                    print(
                        f"stream group: consumer {i} (pid {p.pid}) exited {p.returncode}; the others claim its "
                        "pending messages after --claim-idle-ms",
                        file=sys.stderr,
                        flush=True,
                    )
            time.sleep(poll_s)  # the children's exits, polled: a supervisor has nothing else to wait on
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    failed = [(i, p.pid, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
    for i, pid, rc in failed:
        print(f"stream group: consumer {i} (pid {pid}) exited {rc}", file=sys.stderr)
    return 1 if failed else 0
