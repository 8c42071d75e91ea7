"""All-reduce between ranks on one machine: gloo (loopback TCP) against joules' shared-memory transport.

Starts N rank processes (2 and 3 by default), each joining a gloo group and
mapping one shared file, and times ``all_reduce`` of a ``[tokens, hidden]``
float32 tensor, the exchange a split decoder does twice per layer: hidden 576
(SmolLM2-135M) and 1536 (the 3.3 GB model), 1 and 16 tokens. Prints the median
microseconds per all-reduce and the bytes each token puts through it per step
(payload: 2 all-reduces x layers x hidden x 4 bytes; a ring all-reduce moves
2(N-1)/N of it per rank).

    .venv/bin/python benchmarks/parallel/allreduce.py [--ranks 2 3] [--iters 300]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

SHAPES = [(576, 30, "SmolLM2-135M"), (1536, 28, "3.3 GB model")]  # (hidden, layers, name)
TOKENS = [1, 16]


def rank_main(rank: int, world: int, port: int, shm: str, iters: int) -> None:
    import torch
    import torch.distributed as dist

    from joules.parallel.comm import ShmCommunicator, TorchCommunicator

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    comms = {
        "gloo": TorchCommunicator(device=torch.device("cpu")),
        "shm": ShmCommunicator(Path(shm), rank=rank, world_size=world, chunk_bytes=2 << 20),
    }
    out = []
    with torch.no_grad():
        for hidden, layers, name in SHAPES:
            for tokens in TOKENS:
                x = torch.randn(tokens, hidden)
                for kind, comm in comms.items():
                    for _ in range(20):  # warm-up
                        comm.all_reduce(x.clone())
                    times = []
                    for _ in range(iters):
                        y = x.clone()
                        t0 = time.perf_counter()
                        comm.all_reduce(y)
                        times.append(time.perf_counter() - t0)
                    out.append(
                        {
                            "transport": kind,
                            "model": name,
                            "hidden": hidden,
                            "layers": layers,
                            "tokens": tokens,
                            "median_us": statistics.median(times) * 1e6,
                            "p90_us": sorted(times)[int(0.9 * len(times))] * 1e6,
                        }
                    )
    # Check both transports give every rank the same sum.
    x = torch.full((4, 8), float(rank + 1))
    for comm in comms.values():
        y = x.clone()
        comm.all_reduce(y)
        assert float(y[0, 0]) == world * (world + 1) / 2
    if rank == 0:
        print(json.dumps(out))
    dist.barrier()
    dist.destroy_process_group()


def run(world: int, iters: int) -> list[dict[str, float]]:
    from joules.parallel.shm import SHM_DIR, create_shm

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    shm = SHM_DIR / f"joules-bench-{uuid.uuid4().hex[:8]}"
    create_shm(shm, world_size=world, chunk_bytes=2 << 20)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--as-rank"]
    try:
        procs = [
            subprocess.Popen(
                [*cmd, str(r), str(world), str(port), str(shm), str(iters)], stdout=subprocess.PIPE, env=env
            )
            for r in range(world)
        ]
        outs = [p.communicate(timeout=900)[0] for p in procs]
    finally:
        shm.unlink(missing_ok=True)
    if any(p.returncode for p in procs):
        raise SystemExit(f"a rank failed: exit codes {[p.returncode for p in procs]}")
    rows: list[dict[str, float]] = json.loads(outs[0])
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--as-rank":
        rank_main(*(int(x) if i != 3 else x for i, x in enumerate(sys.argv[2:7])))  # type: ignore[arg-type]
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--iters", type=int, default=300)
    args = ap.parse_args()
    print(f"{'N':>2} {'model':<14} {'tok':>3} {'gloo us':>8} {'shm us':>8} {'shm/gloo':>8}  bytes/token/step")
    for world in args.ranks:
        rows = run(world, args.iters)
        for hidden, layers, name in SHAPES:
            for tokens in TOKENS:
                g = next(
                    r for r in rows if r["transport"] == "gloo" and r["hidden"] == hidden and r["tokens"] == tokens
                )
                m = next(r for r in rows if r["transport"] == "shm" and r["hidden"] == hidden and r["tokens"] == tokens)
                payload = 2 * layers * hidden * 4
                ring = payload * 2 * (world - 1) / world
                print(
                    f"{world:>2} {name:<14} {tokens:>3} {g['median_us']:>8.0f} {m['median_us']:>8.0f} "
                    f"{m['median_us'] / g['median_us']:>8.2f}  payload {payload / 1024:.0f} KiB, "
                    f"ring {ring / 1024:.0f} KiB per rank; per step {2 * layers} all-reduces = "
                    f"{2 * layers * g['median_us'] / 1000:.1f} ms gloo, {2 * layers * m['median_us'] / 1000:.1f} ms shm"
                )


if __name__ == "__main__":
    main()
