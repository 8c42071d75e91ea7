"""The shared-memory transport's file: its layout, and whether this machine can use it (no torch).

The caller creates the file (so it can remove it whatever happens to the
ranks), the ranks map it (``comm.ShmCommunicator``), and the caller unlinks it
as soon as every rank has it mapped.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

SHM_DIR = Path("/dev/shm")
SHM_MACHINES = ("x86_64", "AMD64")  # the protocol relies on x86-64's total store order (see comm.py)
HEADER_BYTES = 4096
FLAG_STRIDE = 64  # one cache line per rank's flag: no false sharing between writers
MAX_RANKS = HEADER_BYTES // FLAG_STRIDE


def shm_available() -> bool:
    return platform.machine() in SHM_MACHINES and SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK)


def shm_size(world_size: int, chunk_bytes: int) -> int:
    """A header page of flags, then two alternating buffers of one ``chunk_bytes`` slot per rank."""
    return HEADER_BYTES + 2 * world_size * chunk_bytes


def create_shm(path: Path, *, world_size: int, chunk_bytes: int) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, shm_size(world_size, chunk_bytes))
    finally:
        os.close(fd)
