"""A rank's memory cap: parsed once, enforced by the operating system inside the rank.

The cap is enforced where the kernel can do it for us: a cgroup v2
``memory.max`` when this process may create a child cgroup, else
``RLIMIT_DATA``. Since Linux 4.7 ``RLIMIT_DATA`` bounds every private writable
mapping (the heap, anonymous ``mmap``, thread stacks: ``VmData`` in
/proc/PID/status), so it caps what a rank can *reserve*, which is more than it
keeps resident; the plan (``plan.py``) budgets for that.
"""

from __future__ import annotations

import os
import re
import resource
from dataclasses import dataclass
from pathlib import Path

from joules.errors import ConfigError

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(value: int | str) -> int:
    """Bytes from ``2200M``-style text: K, M, G, T are powers of 1024 (``MiB``/``MB`` read the same); a plain
    number is bytes."""
    if isinstance(value, bool):
        raise ConfigError(f"a memory size must be bytes or text like '2200M', got {value!r}")
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise ConfigError(
                f"cannot read the memory size {value!r}: write bytes (2306867200) or a number with K, M, G or T "
                "(powers of 1024), e.g. 2200M or 2.5G"
            )
        n = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if n < 1:
        raise ConfigError(f"a memory size must be positive, got {value!r}")
    return n


def format_size(n: int) -> str:
    """``n`` bytes in MiB, as the messages quote sizes."""
    return f"{n / (1 << 20):,.0f} MiB"


@dataclass(frozen=True, kw_only=True)
class AppliedCap:
    """What capped this process: ``cgroup`` (its memory.max path) or ``rlimit_data``."""

    kind: str
    limit: int
    where: str = ""


def _own_cgroup_v2(root: Path) -> Path | None:
    """This process's cgroup v2 directory, or None on a v1-only or hybrid host without one."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            path = root / line[3:].lstrip("/")
            if (path / "cgroup.procs").is_file() and (root / "cgroup.controllers").is_file():
                return path
    return None


def _try_cgroup(limit: int, name: str, root: Path) -> AppliedCap | None:
    """Move this process into a child cgroup with ``memory.max``; None where that is not allowed here.

    cgroup v2's "no internal processes" rule means the child must live under a
    cgroup whose ``memory`` controller is delegated to us; any refusal from the
    kernel (EACCES, EBUSY, EOPNOTSUPP...) means "not writable here", and the
    caller falls back to RLIMIT_DATA.
    """
    parent = _own_cgroup_v2(root)
    if parent is None:
        return None
    try:
        if "memory" not in (parent / "cgroup.subtree_control").read_text().split():
            return None
        child = parent / name
        child.mkdir(exist_ok=True)
        (child / "memory.max").write_text(str(limit))
        (child / "cgroup.procs").write_text(str(os.getpid()))
    except OSError:
        return None
    return AppliedCap(kind="cgroup", limit=limit, where=str(child / "memory.max"))


def apply_cap(limit: int, *, name: str, cgroup_root: Path = Path("/sys/fs/cgroup")) -> AppliedCap:
    """Cap this process at ``limit`` bytes: cgroup v2 memory.max where writable, else RLIMIT_DATA."""
    applied = _try_cgroup(limit, name, cgroup_root)
    if applied is not None:
        return applied
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY and hard < limit:
        limit = hard  # an unprivileged process may only lower its hard limit
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    return AppliedCap(kind="rlimit_data", limit=limit, where="RLIMIT_DATA")


def process_memory(pid: int | str = "self") -> dict[str, int]:
    """RssAnon, RssFile, VmRSS, VmData and VmHWM of a process, in bytes (Linux /proc/PID/status)."""
    keys = ("RssAnon", "RssFile", "RssShmem", "VmRSS", "VmData", "VmHWM")
    out = dict.fromkeys(keys, 0)
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in out:
                out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass  # not Linux or the process is gone: zeros say "unknown"
    return out
