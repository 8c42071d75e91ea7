"""``joules models list|show|promote|rm`` and ``joules import``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from joules.cli.output import fmt_metric, info, print_json, print_table


def add_parsers(sub: argparse._SubParsersAction[Any]) -> None:
    models = sub.add_parser("models", help="list, show, promote and remove registered models")
    msub = models.add_subparsers(dest="models_command", required=True, metavar="COMMAND")

    p = msub.add_parser("list", help="every registered version")
    p.add_argument("name", nargs="?", help="only this model")
    p.add_argument("--json", action="store_true", help="print JSON on stdout")
    p.set_defaults(func=cmd_list)

    p = msub.add_parser("show", help="one version: stage, metrics, lineage, files")
    p.add_argument("ref", metavar="NAME[:VERSION]", help="a bare NAME means its production version")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = msub.add_parser("promote", help="make a version the production one (or move it to another stage)")
    p.add_argument("name")
    p.add_argument("version")
    p.add_argument("--stage", default="production", choices=["production", "staging", "none"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_promote)

    p = msub.add_parser("rm", help="remove a version and its files")
    p.add_argument("name")
    p.add_argument("version")
    p.add_argument("--force", action="store_true", help="also remove the production version")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_rm)

    p = sub.add_parser("import", help="import an ONNX file + spec, a bundle, or a Hugging Face directory")
    p.add_argument("path", type=Path)
    p.add_argument("--name", required=True, help="the model name to register under")
    p.add_argument("--spec", type=Path, help="YAML spec for an ONNX file (task, preprocess, postprocess)")
    p.add_argument("--rules", type=Path, help="a rule file to carry as the bundle's default rules")
    p.add_argument("--max-length", type=int, help="token limit for text models (default 128)")
    p.add_argument("--promote", action="store_true", help="make the imported version the production one")
    p.add_argument(
        "--weights-only",
        action="store_true",
        help="a causal LM directory registered as its safetensors weights, without ONNX export or parity run "
        "(for models too large to export or hold whole; served with --tensor-parallel N, see docs/parallel.md)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_import)


def _registry() -> Any:
    from joules.registry import Registry

    return Registry()


def _summary(m: Any) -> dict[str, Any]:
    test = m.metrics.get("test", {})
    return {
        "name": m.name,
        "version": m.version,
        "stage": str(m.stage),
        "created_at": m.created_at,
        "task": m.task,
        "size_mb": round(m.size_bytes / 1e6, 1),
        "test_f1": test.get("f1"),
        "parent": next((e.get("parent") for e in reversed(m.lineage) if e.get("parent")), None),
    }


def cmd_list(args: argparse.Namespace) -> int:
    versions = _registry().list(args.name)
    if args.json:
        print_json([_summary(m) for m in versions])
        return 0
    if not versions:
        info("no models registered; train one with `joules train spam` or import one with `joules import`")
        return 0
    rows = [
        [
            s["name"],
            s["version"],
            s["stage"],
            s["task"],
            s["size_mb"],
            fmt_metric(s["test_f1"]),
            s["parent"] or "",
            s["created_at"],
        ]
        for s in map(_summary, versions)
    ]
    print_table(rows, ["name", "version", "stage", "task", "MB", "test F1", "parent", "created"])
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    m = _registry().get(args.ref)
    if args.json:
        print_json(m.to_dict())
        return 0
    print(f"{m.ref}  stage={m.stage}  task={m.task}  labels={','.join(m.labels)}  {m.size_bytes / 1e6:.1f} MB")
    print(f"created {m.created_at}  at {m.path}")
    if m.metrics:
        rows = [
            [
                split,
                fmt_metric(v.get("f1"), v.get("f1_ci95")),
                fmt_metric(v.get("roc_auc"), v.get("roc_auc_ci95")),
                fmt_metric(v.get("accuracy")),
                v.get("n", ""),
            ]
            for split, v in m.metrics.items()
        ]
        print()
        print_table(rows, ["split", "F1 [95% CI]", "ROC AUC [95% CI]", "accuracy", "n"])
    if m.lineage:
        print("\nlineage:")
        for e in m.lineage:
            step = e.get("step") or e.get("pass") or "?"
            detail = {k: v for k, v in e.items() if k in ("parent", "source", "base_model", "pass", "passes", "kind")}
            print(f"  - {step} {detail if detail else ''}".rstrip())
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    m = _registry().promote(args.name, args.version, args.stage)
    if args.json:
        print_json(_summary(m))
    else:
        print(f"{m.ref} is now {m.stage}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    m = _registry().remove(args.name, args.version, force=args.force)
    if args.json:
        print_json({"removed": m.ref})
    else:
        print(f"removed {m.ref}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from joules.imports import import_model
    from joules.registry import validate_name

    validate_name(args.name)  # before anything is read or written
    rules = None
    if args.rules:
        from joules.cli.common import read_rules_mapping

        rules = read_rules_mapping(args.rules)
    m = import_model(
        args.path,
        args.name,
        _registry(),
        spec_file=args.spec,
        rules=rules,
        promote=args.promote,
        max_length=args.max_length,
        weights_only=args.weights_only,
    )
    if args.json:
        print_json(m.to_dict())
    else:
        print(f"imported {args.path} as {m.ref} (stage {m.stage})")
    return 0
