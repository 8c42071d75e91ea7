"""``joules worker``: one tensor-parallel rank on this machine, joining a group whose rank 0 runs elsewhere."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parsers(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "worker",
        help="run one tensor-parallel rank of a model served by another machine (docs/parallel.md)",
        description="Join a tensor-parallel group as rank R: rank 0 is the serving process started with "
        "--tensor-parallel N --master-addr A --master-port P; every rank loads only its slices of NAME's weights. "
        "Runs until rank 0 closes the group.",
    )
    p.add_argument("name", metavar="NAME[:VERSION]", help="the registered model (or a model directory)")
    p.add_argument("--rank", type=int, required=True, help="this rank, 1 .. world size - 1")
    p.add_argument("--world-size", type=int, required=True, help="N, as given to --tensor-parallel")
    p.add_argument("--master-addr", required=True, help="address of the machine running rank 0")
    p.add_argument("--master-port", type=int, required=True, help="port rank 0 listens on for the group")
    p.add_argument("--threads", type=int, default=0, help="torch threads for this rank (0: torch's default)")
    p.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    import os

    from joules.errors import ConfigError

    if not 1 <= args.rank < args.world_size:
        raise ConfigError(
            f"--rank {args.rank} is not in 1..{args.world_size - 1}: rank 0 is the serving process itself "
            "(joules serve NAME --tensor-parallel N --master-addr A --master-port P)"
        )
    if args.threads < 0:
        raise ConfigError(f"--threads must be >= 0, got {args.threads}")
    path = Path(args.name)
    if not path.is_dir():
        from joules.registry import Registry

        path = Registry().load(args.name).path
    if args.threads:
        os.environ["JOULES_TP_THREADS"] = str(args.threads)
    from joules.parallel.worker import Rank

    rank = Rank(
        model_dir=path,
        rank=args.rank,
        world_size=args.world_size,
        master_addr=args.master_addr,
        master_port=args.master_port,
        control=None,
        options=None,
    )
    return rank.run()
