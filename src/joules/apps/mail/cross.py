"""Each spam detector on the other's data: the SMS model on e-mail, the e-mail model on SMS.

Both are measured on the test split saved in the other's bundle: the SMS model
reads an e-mail's text as the e-mail model does (``From:``, ``Subject:``,
body); the e-mail model reads an SMS as a message with a body only (an SMS has
no sender or subject line).

    python -m joules.apps.mail.cross [--sms spam] [--email spam-email] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from joules.bundle import Bundle, SplitDataset
from joules.errors import DataError, JoulesError
from joules.registry import Registry
from joules.runtime import Predictor
from joules.runtime.admission import text_view
from joules.runtime.evaluate import evaluate


def _as_text_model(bundle: Bundle) -> Bundle:
    return text_view(bundle) if bundle.spec.preprocess.kind == "email" else bundle


def _test_split(bundle: Bundle) -> Any:
    path = bundle.file("dataset")
    if path is None:
        raise DataError(f"model {bundle.name} has no saved split (dataset.jsonl) to measure on")
    return SplitDataset.read(path)["test"]


def cross_evaluate(registry: Registry, sms: str = "spam", email: str = "spam-email") -> dict[str, Any]:
    """``{model: {data: metrics}}`` for both models on both test splits (bootstrap intervals included)."""
    bundles = {"sms": registry.load(sms), "email": registry.load(email)}
    splits = {name: _test_split(b) for name, b in bundles.items()}
    out: dict[str, Any] = {}
    for model_name, bundle in bundles.items():
        predictor = Predictor(_as_text_model(bundle))
        out[f"{model_name}_model"] = {
            f"on_{data_name}": evaluate(predictor, split) for data_name, split in splits.items()
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sms", default="spam", help="the SMS detector (NAME[:VERSION])")
    parser.add_argument("--email", default="spam-email", help="the e-mail detector (NAME[:VERSION])")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        results = cross_evaluate(Registry(), args.sms, args.email)
    except JoulesError as e:  # a model not found, no saved split: one line and exit 2, as the CLI does
        print(f"cross: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'model':14s} {'on SMS test: spam F1 [95% CI]':32s} {'on e-mail test: spam F1 [95% CI]':32s}")
    for model, by_data in results.items():
        cells = []
        for data in ("on_sms", "on_email"):
            m = by_data[data]
            cells.append(f"{m['f1']:.4f} [{m['f1_ci95'][0]:.3f}, {m['f1_ci95'][1]:.3f}]")
        print(f"{model:14s} {cells[0]:32s} {cells[1]:32s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
