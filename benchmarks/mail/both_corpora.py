"""One detector trained on both corpora (SMS and e-mail), measured on each test split beside the two specialists.

Issue 16 asks: "if a model trained on both does better on both, make it the default". This trains the
e-mail recipe (all-MiniLM-L6-v2, 3 epochs at 5e-5, 128 tokens with the last 32 of a long text) on the
union of the SMS Spam Collection's training split and the SpamAssassin training split (seed 0 of each,
the splits `joules train spam` and `joules train spam-email` use), picks the best epoch on the union of
their validation splits, exports it, and prints its spam F1 with intervals on each test split.

    .venv/bin/python benchmarks/mail/both_corpora.py [--seed 0] [--epochs 3] [--json]

About 30 minutes on 2 idle cores. Compare with `python -m joules.apps.mail.cross` (the specialists).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from joules.apps.common import fine_tune_classifier, minilm_dir
from joules.apps.mail.dataset import load_corpus, split_corpus
from joules.apps.mail.train import DEFAULT_TAIL_TOKENS, email_preprocess
from joules.apps.spam.dataset import load_messages, split_messages
from joules.bundle import Split
from joules.runtime import Predictor, RuntimeOptions
from joules.runtime.admission import text_view
from joules.runtime.evaluate import evaluate
from joules.runtime.inputs import EmailConverter
from joules.runtime.preprocess import TextPreprocessor

LABELS = ["ham", "spam"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    from joules.train import FineTuneConfig, write_text_bundle

    started = time.perf_counter()
    pre_spec = email_preprocess(tail_tokens=DEFAULT_TAIL_TOKENS)
    mail = split_corpus(load_corpus(None, EmailConverter.from_spec(pre_spec)), seed=args.seed)
    sms = split_messages(load_messages(None), seed=args.seed)
    both = {
        name: Split(mail[name].texts + sms[name].texts, mail[name].labels + sms[name].labels)
        for name in ("train", "validation")
    }
    base = minilm_dir(None)
    pre = TextPreprocessor.from_spec(
        base / "tokenizer.json", pre_spec, ["input_ids", "attention_mask", "token_type_ids"]
    )
    cfg = FineTuneConfig(epochs=args.epochs, seed=args.seed)
    model, result = fine_tune_classifier(
        base, pre, both["train"], both["validation"], LABELS, cfg, positive="spam", progress=not args.json
    )
    with tempfile.TemporaryDirectory() as tmp:
        bundle, _ = write_text_bundle(Path(tmp) / "both", model, base / "tokenizer.json", name="both", labels=LABELS)
        bundle = bundle.with_spec(preprocess=pre_spec)
        predictor = Predictor(text_view(bundle), options=RuntimeOptions(allow_spinning=True))
        out: dict[str, Any] = {
            "train_rows": {"email": len(mail["train"]), "sms": len(sms["train"])},
            "best_epoch": result.best_epoch,
            "history": result.history,
            "seconds": round(time.perf_counter() - started, 1),
            "on_sms": evaluate(predictor, sms["test"]),
            "on_email": evaluate(predictor, mail["test"]),
        }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    for k in ("on_sms", "on_email"):
        m = out[k]
        print(f"{k}: spam F1 {m['f1']:.4f} [{m['f1_ci95'][0]:.3f}, {m['f1_ci95'][1]:.3f}] (n {m['n']})")
    print(f"best epoch {out['best_epoch']}, {out['seconds']} s")


if __name__ == "__main__":
    main()
