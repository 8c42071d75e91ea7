"""Options shared by the commands that predict."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from joules.errors import RuleError


def add_predict_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rules", type=Path, help="a rule file that overrides the bundle's default rules")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: one per core)")
    p.add_argument("--providers", help="comma-separated ONNX Runtime execution providers (default: best available)")


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
