"""CPU time of the threads that do a model call's work.

A model call runs on the calling thread and on native worker threads (ONNX
Runtime's intra-op pool, the tokenizer's pool). Python threads that are not
the caller (the HTTP event loop, other requests' threads) are not the call's
work, so the process CPU time would overcharge it. On Linux every thread of
this process has a CPU clock that ``clock_gettime`` reads with nanosecond
resolution; its id is ``MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)`` =
``(~tid << 3) | CPUCLOCK_PERTHREAD_MASK (4) | CPUCLOCK_SCHED (2)`` (Linux,
include/linux/posix-timers_types.h). Elsewhere the process CPU time is used,
and the method says so.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Protocol


class CpuClock(Protocol):
    """Readings a meter needs; fakes implement it in tests."""

    #: Words for the method string: whose CPU time ``thread_cpu`` + ``native_threads`` count.
    scope: str

    def wall(self) -> float:
        """Monotonic seconds."""
        ...

    def thread_cpu(self) -> float:
        """CPU seconds of the calling thread."""
        ...

    def native_threads(self) -> dict[int, float]:
        """CPU seconds of each thread of this process not started by Python, by thread id."""
        ...

    def machine_busy(self) -> float:
        """Busy CPU seconds of the whole machine, all processes (for sharing a package's energy)."""
        ...


def _thread_clock(tid: int) -> int:
    return ((~tid) << 3) | 4 | 2


def read_machine_busy(path: str = "/proc/stat") -> float:
    """Busy CPU seconds since boot from ``/proc/stat`` (all fields but idle and iowait)."""
    try:
        with open(path, encoding="ascii") as f:
            parts = f.readline().split()
    except OSError:
        return 0.0
    ticks = [int(x) for x in parts[1:9]]
    busy = sum(ticks) - ticks[3] - ticks[4]  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


class ThreadCpuClock:
    """Per-thread CPU clocks of this process (Linux).

    Listing ``/proc/self/task`` costs more than reading every clock, and it is done twice
    per model call, so the list of thread ids is kept for ``relist_s`` seconds (native
    pools start once and live as long as their session); a thread that ends is dropped
    at once, one that starts is counted from the next listing on.
    """

    scope = "the calling thread and the native worker threads"

    def __init__(self, relist_s: float = 1.0) -> None:
        self._task_dir = "/proc/self/task"
        self._relist_s = relist_s
        self._tids: list[int] = []
        self._listed = -float("inf")

    @staticmethod
    def available() -> bool:
        try:
            tid = threading.get_native_id()
            time.clock_gettime(_thread_clock(tid))
            return os.path.isdir("/proc/self/task")
        except (OSError, AttributeError, OverflowError):
            return False

    def wall(self) -> float:
        return time.perf_counter()

    def thread_cpu(self) -> float:
        return time.thread_time()

    def native_threads(self) -> dict[int, float]:
        python = {t.native_id for t in threading.enumerate()}
        out: dict[int, float] = {}
        now = time.monotonic()
        if now - self._listed >= self._relist_s:
            try:
                self._tids = [int(name) for name in os.listdir(self._task_dir)]
            except OSError:
                return out
            self._listed = now
        for tid in self._tids:
            if tid in python:
                continue
            try:
                out[tid] = time.clock_gettime(_thread_clock(tid))
            except OSError:
                self._listed = -float("inf")  # the thread ended: list again next time
        return out

    def machine_busy(self) -> float:
        return read_machine_busy()


class ProcessCpuClock:
    """Whole-process CPU time: where per-thread clocks cannot be read."""

    scope = "the whole process"

    def wall(self) -> float:
        return time.perf_counter()

    def thread_cpu(self) -> float:
        return time.process_time()

    def native_threads(self) -> dict[int, float]:
        return {}

    def machine_busy(self) -> float:
        return read_machine_busy()


def default_clock() -> CpuClock:
    return ThreadCpuClock() if ThreadCpuClock.available() else ProcessCpuClock()
