"""``joules train``: the flagship applications."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from joules.cli.output import fmt_metric, info, print_json, print_table

APPS = ("spam",)


def add_parsers(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("train", help="train a flagship model (spam) and register it")
    p.add_argument("app", choices=APPS)
    p.add_argument("--name", help="register under this name (default: the app name)")
    p.add_argument("--data", type=Path, help="the SMS Spam Collection TSV (default: data/sms_spam_collection)")
    p.add_argument("--epochs", type=int, help="passes over the training split (default 5)")
    p.add_argument("--learning-rate", type=float, help="peak AdamW learning rate (default 3e-5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--promote", action="store_true", help="promote even when a production version exists")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from joules.apps.spam.train import train_spam
    from joules.registry import Registry, validate_name

    name = validate_name(args.name or args.app)
    out = train_spam(
        registry=Registry(),
        name=name,
        data=args.data,
        seed=args.seed,
        **{k: v for k, v in (("epochs", args.epochs), ("learning_rate", args.learning_rate)) if v is not None},
        promote=True if args.promote else None,
        progress=not args.no_progress,
    )
    if args.json:
        print_json(out)
        return 0
    info(
        f"trained in {out['train_seconds']:.0f} s (total {out['total_seconds']:.0f} s), best epoch {out['best_epoch']}"
    )
    rows = [
        [
            split,
            fmt_metric(m["f1"], m.get("f1_ci95")),
            fmt_metric(m["roc_auc"], m.get("roc_auc_ci95")),
            fmt_metric(m["accuracy"]),
            m["n"],
        ]
        for split, m in out["metrics"].items()
    ]
    print_table(rows, ["split", "spam F1 [95% CI]", "ROC AUC [95% CI]", "accuracy", "n"])
    print(f"registered {out['name']}:{out['version']} (stage {out['stage']})")
    return 0
