"""Where a joules command's Ray runs: an existing cluster (``--address``) or a local one it starts.

A local Ray is started for one command and stopped when it ends, so no raylet
outlives the command: ports are chosen free by Ray (``ray.init`` with no
address), the dashboard is off, and the object store is small (joules moves
rows and results, not tensors). Workers find joules and the registry through
the job's environment (``JOULES_HOME``, ``PYTHONPATH``), also on a cluster the
command only joins.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from joules.errors import ConfigError, require

# Ray refuses an object store under 75 MiB; joules' blocks are rows of text and small results.
DEFAULT_OBJECT_STORE_BYTES = 256 << 20


@dataclass(frozen=True, kw_only=True)
class RayPlace:
    """``address`` None: start a local Ray with ``num_cpus`` (None: every core) for this command."""

    address: str | None = None
    num_cpus: int | None = None
    object_store_bytes: int = DEFAULT_OBJECT_STORE_BYTES

    def __post_init__(self) -> None:
        if self.address is not None and not self.address.strip():
            raise ConfigError("--address must not be empty; leave it out to start a local Ray for this command")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ConfigError(f"num_cpus must be >= 1, got {self.num_cpus}")
        if self.object_store_bytes < 80 << 20:
            raise ConfigError(f"object_store_bytes must be >= 80 MiB (Ray's minimum), got {self.object_store_bytes}")

    @property
    def local(self) -> bool:
        return self.address is None


def job_env(home: str, names: tuple[str, ...] = ()) -> dict[str, str]:
    """What a Ray worker needs to import joules and find the registry (and the variables ``names``)."""
    env = {"JOULES_HOME": home, "TOKENIZERS_PARALLELISM": "false"}
    for name in ("PYTHONPATH", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", *names):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


@contextmanager
def ray_session(
    place: RayPlace, *, home: str, env_names: tuple[str, ...] = (), namespace: str | None = None
) -> Iterator[Any]:
    """Ray, connected for the block; a local Ray started here is stopped at its end, whatever happens."""
    require("ray", "ray")
    import ray

    # Ray's own start-up chatter is not the command's output; its errors still reach the log.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {
        "runtime_env": {"env_vars": job_env(home, env_names)},
        "logging_level": logging.WARNING,
        "namespace": namespace,
    }
    if place.local:
        kwargs.update(
            # "local": always a new Ray of its own; with no address, ray.init would join a Ray already
            # running on the machine (another command's), and stopping it would not be ours to do.
            address="local",
            num_cpus=place.num_cpus or os.cpu_count() or 1,
            include_dashboard=False,
            object_store_memory=place.object_store_bytes,
        )
    else:
        kwargs["address"] = place.address
    ray.init(**kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()  # a local Ray started by ray.init stops with it; a joined cluster is only left


def cluster_cpus(ray: Any) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))
