"""Baselines for the e-mail detector on its exact split: TF-IDF (word 1-2-grams and character 3-5-grams) +
logistic regression on whole messages (From, Subject and all the body text), C chosen by 5-fold
cross-validation on the training split, as for the SMS detector (apps/spam/baselines.py).

    python -m joules.apps.mail.baselines [--seeds 0 1 2] [--json]
    python -m joules.apps.mail.baselines --view 128 --tail-tokens 32   # on what such a model reads

``--view N`` fits the baseline on the text a model reading N tokens sees (the MiniLM tokenizer's tokens,
decoded back), to tell what part of a message carries the signal: that chose the detector's
``tail_tokens`` (docs/inputs.md, "The e-mail detector").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

from joules.apps.mail.dataset import LABELS, load_corpus, split_corpus
from joules.bundle import Split, SplitDataset
from joules.errors import require
from joules.quality import classification_metrics

C_GRID = [1, 10, 100, 1000]


def tfidf_baseline(dataset: SplitDataset, *, seed: int = 0) -> dict[str, Any]:
    """``{"tfidf_lr": {"C", "seconds", "validation": metrics, "test": metrics}}`` on the dataset's split."""
    require("sklearn", "train")
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    started = time.perf_counter()
    train = dataset["train"]
    y_train = np.asarray(train.label_indices(tuple(LABELS)))
    word = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True, min_df=2)
    x_train = hstack([word.fit_transform(train.texts), char.fit_transform(train.texts)]).tocsr()
    cv = StratifiedKFold(5, shuffle=True, random_state=seed)
    search = GridSearchCV(LogisticRegression(max_iter=5000), {"C": C_GRID}, scoring="f1", cv=cv)
    search.fit(x_train, y_train)
    out: dict[str, Any] = {"C": float(search.best_params_["C"])}
    for name in ("validation", "test"):
        split = dataset[name]
        x = hstack([word.transform(split.texts), char.transform(split.texts)]).tocsr()
        y = np.asarray(split.label_indices(tuple(LABELS)))
        out[name] = classification_metrics(y, search.predict_proba(x), LABELS.index("spam"))
    out["seconds"] = round(time.perf_counter() - started, 1)
    return {"tfidf_lr": out}


def model_view(dataset: SplitDataset, max_length: int, tail_tokens: int) -> SplitDataset:
    """Each text as the tokens a MiniLM model reading ``max_length`` (``tail_tokens`` from the end) gets, decoded."""
    from joules.apps.common import minilm_dir
    from joules.runtime.preprocess import TextPreprocessor

    pre = TextPreprocessor(minilm_dir(None) / "tokenizer.json", max_length, ["input_ids"], tail_tokens=tail_tokens)
    splits = {}
    for name, split in dataset.splits.items():
        texts = [pre.tokenizer.decode(e.ids) for e in pre.encode(split.texts)]
        splits[name] = Split(texts, split.labels)
    return SplitDataset(splits)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--view", type=int, metavar="N", help="fit on what a model reading N tokens sees")
    parser.add_argument("--tail-tokens", type=int, default=0, help="with --view: of the N, how many from the end")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    corpus = load_corpus()
    results = {}
    for seed in args.seeds:
        dataset = split_corpus(corpus, seed)
        if args.view:
            dataset = model_view(dataset, args.view, args.tail_tokens)
        results[seed] = tfidf_baseline(dataset, seed=seed)["tfidf_lr"]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for seed, r in results.items():
        lo, hi = r["test"]["f1_ci95"]
        print(
            f"seed {seed}: C={r['C']:<6g} test spam F1 {r['test']['f1']:.4f} [{lo:.3f}, {hi:.3f}]  ({r['seconds']} s)"
        )
    print(f"mean test F1 over seeds {args.seeds}: {np.mean([r['test']['f1'] for r in results.values()]):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
