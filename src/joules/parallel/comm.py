"""How ranks exchange tensors: torch.distributed (gloo, NCCL), or shared memory on one machine.

Runs in rank processes only (imports torch). Three collectives are all a split
Llama needs: ``all_reduce`` (sum, in place) after each row-parallel matmul,
``broadcast_bytes`` of each step's inputs from rank 0, and ``gather`` of the
vocabulary-parallel logits to rank 0.

``ShmCommunicator`` is the single-machine transport that vLLM's CPU worker
also uses instead of gloo (vllm/distributed/device_communicators/
cpu_communicator.py): each rank copies its part into its own slot of a shared
buffer, raises its flag, waits for every flag, and sums the slots itself, in
rank order so that every rank gets the same bits. Two buffers alternate, so a
fast rank writing phase g+1 never overwrites what a slow rank still reads of
phase g (to reach g+2 it must have seen every rank finish g+1). A waiting rank
spins for a few microseconds, then sleeps in the kernel on the flag
(futex(2)), so ranks outnumbering cores do not steal each other's CPU.
Ordering relies on x86-64's total store order (data stored before the flag is
seen before it); on other machines the transport is not offered.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import time
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist

from joules.errors import RankTimeoutError
from joules.parallel.shm import FLAG_STRIDE, HEADER_BYTES, MAX_RANKS, shm_size

_SYS_FUTEX = 202  # x86-64 syscall number
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1


class Communicator(Protocol):
    rank: int
    world_size: int

    def all_reduce(self, t: torch.Tensor) -> None: ...

    def broadcast_bytes(self, data: bytes | None, *, idle: bool = False) -> bytes: ...

    def gather(self, t: torch.Tensor) -> list[torch.Tensor] | None: ...

    def close(self) -> None: ...


class SoloCommunicator:
    """One rank: every collective is the identity (``--tensor-parallel 1``, the unsplit reference)."""

    rank, world_size = 0, 1

    def all_reduce(self, t: torch.Tensor) -> None:
        """A sum over one rank is its input."""

    def broadcast_bytes(self, data: bytes | None, *, idle: bool = False) -> bytes:
        return data or b""

    def gather(self, t: torch.Tensor) -> list[torch.Tensor] | None:
        return [t]

    def close(self) -> None:
        """Nothing to release."""


class TorchCommunicator:
    """torch.distributed collectives over the default process group (gloo on CPU, NCCL on CUDA)."""

    def __init__(self, *, device: torch.device) -> None:
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.device = device

    def all_reduce(self, t: torch.Tensor) -> None:
        dist.all_reduce(t)

    def broadcast_bytes(self, data: bytes | None, *, idle: bool = False) -> bytes:
        # Step inputs are small: they always travel on the CPU group (gloo), even beside NCCL.
        size = torch.tensor([len(data) if data is not None else 0], dtype=torch.int64)
        dist.broadcast(size, 0)
        buf = (
            torch.frombuffer(bytearray(data), dtype=torch.uint8)
            if data is not None and self.rank == 0
            else torch.empty(int(size.item()), dtype=torch.uint8)
        )
        if buf.numel():
            dist.broadcast(buf, 0)
        return bytes(buf.numpy().tobytes())

    def gather(self, t: torch.Tensor) -> list[torch.Tensor] | None:
        t = t.contiguous()
        out = [torch.empty_like(t) for _ in range(self.world_size)] if self.rank == 0 else None
        dist.gather(t, out, dst=0)
        return out

    def close(self) -> None:
        """The process group is destroyed by the worker, which made it."""


def _futex(addr: int, op: int, val: int, timeout_s: float | None = None) -> int:
    ts = None
    if timeout_s is not None:
        sec = int(timeout_s)
        ts = _Timespec(sec, int((timeout_s - sec) * 1e9))
    return int(
        _LIBC.syscall(
            _SYS_FUTEX, ctypes.c_void_p(addr), op, ctypes.c_uint32(val), ctypes.byref(ts) if ts else None, None, 0
        )
    )


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_LIBC = ctypes.CDLL(None, use_errno=True)


class ShmCommunicator:
    """All-reduce, broadcast and gather through one shared file in /dev/shm (ranks on one machine)."""

    def __init__(
        self,
        path: Path,
        *,
        rank: int,
        world_size: int,
        chunk_bytes: int,
        op_timeout_s: float = 120.0,
        spin_s: float = 20e-6,
    ) -> None:
        if world_size > MAX_RANKS:
            raise ValueError(f"the shared-memory transport supports at most {MAX_RANKS} ranks")
        self.rank, self.world_size, self.chunk = rank, world_size, chunk_bytes
        self.op_timeout_s, self.spin_s = op_timeout_s, spin_s
        size = shm_size(world_size, chunk_bytes)
        fd = os.open(path, os.O_RDWR)
        try:
            self._mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._flags = np.ndarray((world_size,), dtype=np.uint32, buffer=self._mm, strides=(FLAG_STRIDE,))
        self._anchor = ctypes.c_char.from_buffer(self._mm)
        self._base = ctypes.addressof(self._anchor)
        whole = torch.frombuffer(self._mm, dtype=torch.uint8)
        self._slots = [
            [whole[HEADER_BYTES + (b * world_size + i) * chunk_bytes :][:chunk_bytes] for i in range(world_size)]
            for b in range(2)
        ]
        self._phase = int(self._flags[rank])
        self._ppid = os.getppid()

    # -- the phase protocol ----------------------------------------------------------------------------

    def _begin(self) -> tuple[int, list[torch.Tensor]]:
        g = (self._phase + 1) & 0xFFFFFFFF
        return g, self._slots[g & 1]

    def _publish_and_wait(self, g: int, *, idle: bool = False) -> None:
        self._phase = g
        self._flags[self.rank] = g
        _futex(self._base + self.rank * FLAG_STRIDE, _FUTEX_WAKE, 0x7FFFFFFF)
        prev = (g - 1) & 0xFFFFFFFF  # a peer is at most one phase behind or ahead of us
        flags = self._flags
        if not (flags == prev).any():
            return
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < self.spin_s:
            if not (flags == prev).any():
                return
        deadline = None if idle else time.monotonic() + self.op_timeout_s
        while True:
            late = np.flatnonzero(flags == prev)
            if not late.size:
                return
            _futex(self._base + int(late[0]) * FLAG_STRIDE, _FUTEX_WAIT, prev, 0.1)
            if deadline is not None and time.monotonic() > deadline:
                raise RankTimeoutError(
                    f"rank {self.rank} waited {self.op_timeout_s:.0f} s for rank(s) {late.tolist()} in a collective"
                )
            if idle and os.getppid() != self._ppid:
                raise RankTimeoutError(f"rank {self.rank}: the process that started the group is gone")

    # -- collectives -----------------------------------------------------------------------------------

    def all_reduce(self, t: torch.Tensor) -> None:
        flat = t.view(-1).view(torch.uint8)
        item = t.element_size()
        step = self.chunk // item * item
        for off in range(0, flat.numel(), step):
            part = flat[off : off + step]
            g, slots = self._begin()
            slots[self.rank][: part.numel()].copy_(part)
            self._publish_and_wait(g)
            n = part.numel()
            out = part.view(t.dtype)
            out.copy_(slots[0][:n].view(t.dtype))
            for i in range(1, self.world_size):
                out.add_(slots[i][:n].view(t.dtype))

    def broadcast_bytes(self, data: bytes | None, *, idle: bool = False) -> bytes:
        """Rank 0's ``data`` on every rank; ``idle`` waits without a timeout (the next step may be far off).

        The first phase carries the length (8 bytes) and the first part; more phases follow if it is longer.
        """
        src = self.rank == 0
        payload = np.frombuffer(data or b"", dtype=np.uint8)
        got = bytearray()
        off, size, first = 0, 0, True
        while first or off < size:
            g, slots = self._begin()
            buf = slots[0].numpy()
            head = 8 if first else 0
            if src:
                if first:
                    buf[:8] = np.frombuffer(np.int64(payload.size).tobytes(), dtype=np.uint8)
                n = min(self.chunk - head, payload.size - off)
                buf[head : head + n] = payload[off : off + n]
            self._publish_and_wait(g, idle=idle and first)
            if first:
                size = int(np.frombuffer(buf[:8].tobytes(), dtype=np.int64)[0])
            n = min(self.chunk - head, size - off)
            if not src:
                got += buf[head : head + n].tobytes()
            off += n
            first = False
        return bytes(payload.tobytes()) if src else bytes(got)

    def gather(self, t: torch.Tensor) -> list[torch.Tensor] | None:
        flat = t.contiguous().view(-1).view(torch.uint8)
        out = [torch.empty_like(t) for _ in range(self.world_size)] if self.rank == 0 else None
        outs = [o.view(-1).view(torch.uint8) for o in out] if out is not None else []
        for off in range(0, flat.numel(), self.chunk):
            part = flat[off : off + self.chunk]
            g, slots = self._begin()
            slots[self.rank][: part.numel()].copy_(part)
            self._publish_and_wait(g)
            for i, o in enumerate(outs):
                o[off : off + part.numel()].copy_(slots[i][: part.numel()])
        # No closing barrier: the alternating buffers keep the next phase's writes away from these.
        return out

    def close(self) -> None:
        """Drop this rank's views of the mapping; it is unmapped when the last one goes (at exit at the latest)."""
        self._slots = []
        self._flags = np.zeros(0, dtype=np.uint32)
