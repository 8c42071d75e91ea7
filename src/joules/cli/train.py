"""``joules train``: the flagship applications and the examples."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from joules.cli.output import fmt_metric, info, print_json, print_table

# app -> what it trains (the first line of `joules train --help`)
APPS = {
    "spam": "SMS spam detector (all-MiniLM-L6-v2 fine-tuned on the SMS Spam Collection)",
    "spam-email": "e-mail spam detector on raw RFC 822 messages (SpamAssassin public corpus)",
    "digits": "image classifier, labels 0-9, on PNG/JPEG files of any size (scikit-learn digits)",
    "cancer": "tabular example: breast-cancer logistic regression on named features (scikit-learn data)",
}


def add_parsers(sub: argparse._SubParsersAction[Any]) -> None:
    listing = "; ".join(f"{k}: {v}" for k, v in APPS.items())
    p = sub.add_parser("train", help="train a flagship model or an example and register it", description=listing)
    p.add_argument("app", choices=list(APPS))
    p.add_argument("--name", help="register under this name (default: the app name)")
    p.add_argument(
        "--data",
        type=Path,
        help="spam: the SMS Spam Collection TSV (default data/sms_spam_collection); "
        "spam-email: the corpus tarball (default data/spamassassin_public_corpus)",
    )
    p.add_argument("--epochs", type=int, help="passes over the training split (spam 5, spam-email 3, digits 30)")
    p.add_argument("--learning-rate", type=float, help="peak AdamW learning rate (spam, spam-email)")
    p.add_argument(
        "--tail-tokens",
        type=int,
        help="spam-email: of the 128 tokens read from a long message, how many come from its end (default 32)",
    )
    p.add_argument("--seed", type=int, default=0, help="split and initialisation seed")
    p.add_argument("--promote", action="store_true", help="promote even when a production version exists")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train)


def _tuning(args: argparse.Namespace) -> dict[str, Any]:
    pairs = (("epochs", args.epochs), ("learning_rate", args.learning_rate))
    return {k: v for k, v in pairs if v is not None}


def _spam(args: argparse.Namespace, registry: Any, name: str) -> dict[str, Any]:
    from joules.apps.spam.train import train_spam

    return train_spam(
        registry=registry,
        name=name,
        data=args.data,
        seed=args.seed,
        promote=True if args.promote else None,
        progress=not args.no_progress,
        **_tuning(args),
    )


def _spam_email(args: argparse.Namespace, registry: Any, name: str) -> dict[str, Any]:
    from joules.apps.mail.train import train_spam_email

    return train_spam_email(
        registry=registry,
        name=name,
        data=args.data,
        seed=args.seed,
        promote=True if args.promote else None,
        progress=not args.no_progress,
        **_tuning(args),
        **({"tail_tokens": args.tail_tokens} if args.tail_tokens is not None else {}),
    )


def _digits(args: argparse.Namespace, registry: Any, name: str) -> dict[str, Any]:
    from joules.apps.digits.train import train_digits

    epochs = {"epochs": args.epochs} if args.epochs is not None else {}
    return train_digits(registry=registry, name=name, seed=args.seed, promote=True if args.promote else None, **epochs)


def _cancer(args: argparse.Namespace, registry: Any, name: str) -> dict[str, Any]:
    from joules.apps.cancer.train import train_cancer

    return train_cancer(registry=registry, name=name, seed=args.seed, promote=True if args.promote else None)


TRAINERS: dict[str, Callable[[argparse.Namespace, Any, str], dict[str, Any]]] = {
    "spam": _spam,
    "spam-email": _spam_email,
    "digits": _digits,
    "cancer": _cancer,
}


def cmd_train(args: argparse.Namespace) -> int:
    from joules.errors import ConfigError
    from joules.registry import Registry, validate_name

    if args.app not in ("spam", "spam-email"):
        unused = [flag for flag, v in (("--data", args.data), ("--learning-rate", args.learning_rate)) if v is not None]
        if args.app == "cancer" and args.epochs is not None:
            unused.append("--epochs")
        if unused:
            raise ConfigError(
                f"joules train {args.app} takes no {', '.join(unused)} (its data ships with scikit-learn)"
            )
    name = validate_name(args.name or args.app)
    out = TRAINERS[args.app](args, Registry(), name)
    if args.json:
        print_json(out)
        return 0
    if "train_seconds" in out:
        info(f"trained in {out['train_seconds']:.0f} s (total {out['total_seconds']:.0f} s)")
    rows = []
    for split, m in out["metrics"].items():
        if "f1" in m:
            quality = [fmt_metric(m["f1"], m.get("f1_ci95")), fmt_metric(m["roc_auc"], m.get("roc_auc_ci95"))]
        else:
            quality = [fmt_metric(m.get("f1_macro")), "-"]
        rows.append([split, *quality, fmt_metric(m["accuracy"], m.get("accuracy_ci95")), m["n"]])
    positive = "macro F1" if all("f1" not in m for m in out["metrics"].values()) else "F1 [95% CI]"
    print_table(rows, ["split", positive, "ROC AUC [95% CI]", "accuracy", "n"])
    print(f"registered {out['name']}:{out['version']} (stage {out['stage']})")
    return 0
