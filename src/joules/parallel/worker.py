"""A tensor-parallel rank: ``python -m joules.parallel.worker`` (or ``joules worker`` on another machine).

Every rank joins one torch.distributed group (gloo, plus NCCL when CUDA is
there), learns the group's options from rank 0, caps its own memory, loads
only its slices of the weights and then runs whatever rank 0 broadcasts.
Rank 0 is started by the process that holds the engine
(``TensorParallelDecoder``) and talks to it through two pipes; the others
only talk to the group. Any failure ends the rank with a message on stderr
and a non-zero exit code: a group with a missing rank cannot compute, and the
decoder in the caller turns that into ``EngineUnavailableError``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import select
import socket
import sys
import time
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from joules.errors import JoulesError
from joules.parallel import protocol as P
from joules.parallel.llama import LlamaShape
from joules.parallel.memory import AppliedCap, apply_cap, process_memory
from joules.parallel.plan import ShardPlan
from joules.parallel.weights import WeightIndex

log = logging.getLogger("joules.parallel.worker")
STATS_BYTES = 8192  # one rank's JSON stats, padded, for a fixed-size all_gather
DEFAULT_INIT_TIMEOUT_S = 600.0  # ranks started by hand on other machines may join late


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        b = os.read(fd, min(n - got, 1 << 20))
        if not b:
            return None
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def _read_request(fd: int, timeout_s: float) -> bytes | None:
    """The caller's next request; ``b""`` on timeout; None when the caller is gone (EOF)."""
    ready, _, _ = select.select([fd], [], [], timeout_s)
    if not ready:
        return b""
    head = _read_exact(fd, 8)
    if head is None:
        return None
    (n,) = np.frombuffer(head, dtype=np.int64)
    return _read_exact(fd, int(n))


def _write(fd: int, status: int, payload: bytes) -> None:
    view = memoryview(P.RESPONSE_HEAD.pack(status, len(payload)) + payload)
    while view:
        view = view[os.write(fd, view) :]


def _release_freed_memory() -> None:
    """Give the heap's freed pages back (glibc keeps them otherwise) so resident memory settles after loading."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        log.debug("malloc_trim unavailable (not glibc): freed heap pages stay until reused")


class Rank:
    """One rank's life: join, load, serve steps, leave."""

    def __init__(
        self,
        *,
        model_dir: Path,
        rank: int,
        world_size: int,
        master_addr: str,
        master_port: int,
        control: tuple[int, int] | None,
        options: dict[str, Any] | None,
        init_timeout_s: float = DEFAULT_INIT_TIMEOUT_S,
    ) -> None:
        if (rank == 0) != (control is not None) or (rank == 0) != (options is not None):
            raise ValueError("rank 0, and only rank 0, takes --control and --options from the caller")
        self.model_dir, self.rank, self.world_size = model_dir, rank, world_size
        self.master = (master_addr, master_port)
        self.control, self.options = control, options
        self.init_timeout_s = init_timeout_s
        self.cap: AppliedCap | None = None

    def run(self) -> int:
        import torch
        import torch.distributed as dist

        threads = int(os.environ.get("JOULES_TP_THREADS") or 0)
        if threads:
            torch.set_num_threads(threads)
        cuda = torch.cuda.is_available() and os.environ.get("JOULES_TP_DEVICE", "") != "cpu"
        device = torch.device("cuda", self.rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        addr, port = self.master
        dist.init_process_group(
            "cpu:gloo,cuda:nccl" if cuda else "gloo",
            init_method=f"tcp://{addr}:{port}",
            rank=self.rank,
            world_size=self.world_size,
            timeout=timedelta(seconds=self.init_timeout_s),
        )
        try:
            return self._serve(torch, dist, device)
        finally:
            dist.destroy_process_group()

    def _all_gather_json(self, dist: Any, torch: Any, obj: dict[str, Any]) -> list[dict[str, Any]]:
        raw = json.dumps(obj).encode()[:STATS_BYTES]
        buf = torch.zeros(STATS_BYTES, dtype=torch.uint8)
        buf[: len(raw)] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        out = [torch.zeros_like(buf) for _ in range(self.world_size)]
        dist.all_gather(out, buf)
        return [json.loads(bytes(t.numpy().tobytes()).rstrip(b"\0") or b"{}") for t in out]

    def _serve(self, torch: Any, dist: Any, device: Any) -> int:
        from joules.parallel.comm import ShmCommunicator, SoloCommunicator, TorchCommunicator
        from joules.parallel.model import LlamaShard, StepPart

        boot = TorchCommunicator(device=torch.device("cpu"))
        opts = json.loads(boot.broadcast_bytes(json.dumps(self.options).encode() if self.rank == 0 else None))
        shard = None
        comm: Any = None
        error = None
        try:
            shape = LlamaShape.read(self.model_dir)
            index = WeightIndex.from_directory(self.model_dir)
            if index.fingerprint != opts["fingerprint"]:
                raise JoulesError(
                    f"rank {self.rank} on {socket.gethostname()}: the weights in {str(self.model_dir)!r} differ "
                    f"from rank 0's (fingerprint {index.fingerprint[:12]} vs {opts['fingerprint'][:12]}); import "
                    "the same model version on every machine"
                )
            plan = ShardPlan(shape=shape, world_size=self.world_size, vocab_parallel=opts["vocab_parallel"])
            if opts.get("cap"):
                self.cap = apply_cap(int(opts["cap"]), name=f"joules-tp-{os.getpid()}")
            if self.world_size == 1:
                comm = SoloCommunicator()
            elif opts["transport"] == "shm" and device.type == "cpu":  # tensors on GPUs go through NCCL
                comm = ShmCommunicator(
                    Path(opts["shm_path"]),
                    rank=self.rank,
                    world_size=self.world_size,
                    chunk_bytes=int(opts["chunk_bytes"]),
                    op_timeout_s=float(opts["collective_timeout_s"]),
                    spin_s=float(opts["spin_us"]) * 1e-6,
                )
            else:
                comm = TorchCommunicator(device=device)
            shard = LlamaShard(
                shape=shape,
                plan=plan,
                rank=self.rank,
                index=index,
                comm=comm,
                dtype=opts["dtype"],
                num_slots=int(opts["num_slots"]),
                max_model_len=int(opts["max_model_len"]),
                device=device,
            )
        except MemoryError:
            error = f"rank {self.rank}: out of memory while loading under the cap of {opts.get('cap')} bytes"
        except (JoulesError, RuntimeError, OSError, ValueError) as e:
            error = f"rank {self.rank}: {type(e).__name__}: {e}"
        _release_freed_memory()
        stats = self._all_gather_json(dist, torch, self._stats(shard, error))
        errors = [s["error"] for s in stats if s.get("error")]
        if errors:
            if self.control:
                _write(self.control[1], P.STATUS_ERROR, "; ".join(errors).encode())
            print("joules rank: " + "; ".join(errors), file=sys.stderr)
            return 1
        assert shard is not None and comm is not None  # no error means both were built
        if self.control:
            _write(self.control[1], P.STATUS_OK, json.dumps(stats).encode())
        keepalive = float(opts["keepalive_s"])
        while True:
            if self.control:
                msg = _read_request(self.control[0], keepalive)
                msg = P.encode_op(P.OP_CLOSE) if msg is None else (msg or P.encode_op(P.OP_NOOP))
                comm.broadcast_bytes(msg)
            else:
                msg = comm.broadcast_bytes(None, idle=True)
            op, words = P.decode(msg)
            if op == P.OP_STEP:
                parts, tokens = P.decode_step(words)
                logits = shard.step([StepPart(*p) for p in parts], torch.from_numpy(np.array(tokens, dtype=np.int64)))
                if self.control:
                    body = b"" if logits is None else logits.numpy().astype(np.float32, copy=False).tobytes()
                    _write(self.control[1], P.STATUS_OK, body)
            elif op == P.OP_COPY:
                shard.copy_slot(int(words[0]), int(words[1]), int(words[2]))
                if self.control:
                    _write(self.control[1], P.STATUS_OK, b"")
            elif op == P.OP_REPORT:
                stats = self._all_gather_json(dist, torch, self._stats(shard, None))
                if self.control:
                    _write(self.control[1], P.STATUS_OK, json.dumps(stats).encode())
            elif op == P.OP_CLOSE:
                comm.close()
                return 0

    def _stats(self, shard: Any, error: str | None) -> dict[str, Any]:
        import torch

        return {
            "rank": self.rank,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "error": error,
            "weight_bytes": getattr(shard, "weight_bytes", 0),
            "kv_bytes": getattr(shard, "kv_bytes", 0),
            "device": str(getattr(shard, "device", "")),
            "threads": torch.get_num_threads(),
            "cap": None if self.cap is None else asdict(self.cap),
            "memory": process_memory(),
            "time": time.time(),
        }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m joules.parallel.worker", description=__doc__.splitlines()[0])
    env = os.environ  # launchers that set RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT (srun, mpirun scripts)
    p.add_argument("--model", type=Path, required=True, help="the model directory (config.json + safetensors)")
    p.add_argument("--rank", type=int, default=env.get("RANK"), required="RANK" not in env)
    p.add_argument("--world-size", type=int, default=env.get("WORLD_SIZE"), required="WORLD_SIZE" not in env)
    p.add_argument("--master-addr", default=env.get("MASTER_ADDR", "127.0.0.1"))
    p.add_argument("--master-port", type=int, default=env.get("MASTER_PORT"), required="MASTER_PORT" not in env)
    p.add_argument("--control", help="rank 0: READ_FD,WRITE_FD of the pipes to the caller")
    p.add_argument("--options", help="rank 0: the group's options (JSON)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s rank %(message)s")
    control = tuple(int(x) for x in args.control.split(",")) if args.control else None
    rank = Rank(
        model_dir=args.model,
        rank=args.rank,
        world_size=args.world_size,
        master_addr=args.master_addr,
        master_port=args.master_port,
        control=control,  # type: ignore[arg-type]
        options=json.loads(args.options) if args.options else None,
    )
    try:
        return rank.run()
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        # A rank that cannot go on says why and exits: the caller sees the exit and fails the engine fast.
        print(f"joules rank {args.rank}: {type(e).__name__}: {e}", file=sys.stderr)
        if control:
            try:
                _write(control[1], P.STATUS_ERROR, f"rank {args.rank}: {type(e).__name__}: {e}".encode())
            except OSError:
                log.debug("the caller is gone; nobody to tell")
        return 1


if __name__ == "__main__":
    sys.exit(main())
