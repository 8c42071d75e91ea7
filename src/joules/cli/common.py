"""Options shared by the commands that predict."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from joules.errors import RuleError


def default(cls: type, name: str) -> Any:
    """The default of field ``name`` of the configuration dataclass ``cls``: flags read their
    defaults from the dataclasses, so a command with no flags runs the dataclass's defaults."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise TypeError(f"{cls.__name__}.{name} has no default")
    raise TypeError(f"{cls.__name__} has no field {name!r}")


def add_predict_options(p: argparse.ArgumentParser) -> None:
    from joules.runtime.options import RuntimeOptions

    p.add_argument("--rules", type=Path, help="a rule file that overrides the bundle's default rules")
    p.add_argument(
        "--threads",
        type=int,
        default=default(RuntimeOptions, "intra_op_threads"),
        help="ONNX Runtime intra-op threads (0: one per core; default %(default)s)",
    )
    p.add_argument("--providers", help="comma-separated ONNX Runtime execution providers (default: best available)")


def add_text_limit(p: argparse.ArgumentParser) -> None:
    from joules.runtime.options import RuntimeOptions

    p.add_argument(
        "--max-text-bytes",
        type=int,
        default=default(RuntimeOptions, "max_text_bytes"),
        help="longer texts are refused (the same rule and reason in every mode); "
        "shorter ones are cut to the model's token limit (default %(default)s)",
    )


def runtime_options(args: argparse.Namespace, **overrides: Any) -> Any:
    from joules.runtime import RuntimeOptions

    providers = tuple(x.strip() for x in args.providers.split(",")) if getattr(args, "providers", None) else None
    return RuntimeOptions(intra_op_threads=getattr(args, "threads", 0), providers=providers, **overrides)


def read_rules_mapping(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise RuleError(f"cannot read rule file {str(path)!r}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise RuleError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise RuleError(f"{path}: a rule file is a mapping with 'rules' and 'default'")
    return data


# --batch-invariant, on every command that runs a text-generation engine (serve, batch, stream).
BATCH_INVARIANT_HELP = (
    "every product in one layout, so a sequence's logits have the same bits alone and in any batch; without it, "
    "batched decode steps run a faster layout that can differ by rounding (docs/generate.md)"
)


def add_parallel_options(p: argparse.ArgumentParser) -> None:
    """``--tensor-parallel`` and ``--max-worker-memory``: how a generative model is split (serve/engines.py)."""
    p.add_argument(
        "--tensor-parallel",
        type=int,
        metavar="N",
        help="run a generative model's decoder in N worker processes, each holding 1/N of its weights "
        "(the torch path; 1: unsplit in one worker). Default: ONNX Runtime in this process, or one worker for "
        "a weights-only model",
    )
    p.add_argument(
        "--max-worker-memory",
        metavar="SIZE",
        help="memory each tensor-parallel worker may hold, e.g. 2200M or 3G (powers of 1024), enforced by the "
        "operating system; a model that does not fit is refused with the N that would (default: no cap)",
    )
    p.add_argument(
        "--master-addr",
        metavar="ADDR",
        help="with --tensor-parallel N: run only rank 0 here, listening on ADDR for ranks 1..N-1 started on other "
        "machines with `joules worker` (docs/parallel.md)",
    )
    p.add_argument("--master-port", type=int, metavar="PORT", help="the port of --master-addr")


def parallel_options(args: argparse.Namespace) -> Any:
    from joules.parallel.memory import parse_size
    from joules.serve.engines import ParallelOptions

    size = getattr(args, "max_worker_memory", None)
    engine = getattr(args, "engine", None)
    return ParallelOptions(
        tensor_parallel=getattr(args, "tensor_parallel", None),
        max_worker_memory=parse_size(size) if size is not None else None,
        engine=engine if isinstance(engine, str) else "local",
        master_addr=getattr(args, "master_addr", None),
        master_port=getattr(args, "master_port", None),
    )


def add_engine_options(p: argparse.ArgumentParser, *, actors: bool = True) -> None:
    """``--engine local|ray`` and where Ray runs (docs/scaling.md)."""
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this process; ray: a Ray cluster (the 'ray' extra; default %(default)s)",
    )
    p.add_argument(
        "--address",
        help="with --engine ray: the Ray cluster to join (e.g. 10.0.0.5:6379 or auto); "
        "without it a local Ray is started for the command and stopped at its end",
    )
    if actors:
        p.add_argument(
            "--actors",
            type=int,
            help="with --engine ray: scoring actors, one model each (default: the cluster's CPUs - 1, at least 1)",
        )


def refuse_ray_flags(args: argparse.Namespace) -> None:
    """A Ray flag given without ``--engine ray`` would be ignored silently: say so instead."""
    from joules.errors import ConfigError

    given = [f for f, v in (("--address", args.address), ("--actors", getattr(args, "actors", None))) if v is not None]
    if given:
        raise ConfigError(f"{', '.join(given)} only apply with --engine ray; add --engine ray or drop them")


def ray_place(args: argparse.Namespace) -> Any:
    from joules.serve.ray.cluster import RayPlace

    return RayPlace(address=args.address)
