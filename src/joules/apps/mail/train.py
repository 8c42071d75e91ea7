"""``joules train spam-email``: all-MiniLM-L6-v2 fine-tuned on raw e-mail.

The bundle's preprocess kind is ``email``: it is served on raw messages, and
what the model reads is exactly what the converter makes of one (``From``,
``Subject``, then body text; of a longer one its first tokens and its last
``tail_tokens``, ``max_length`` in all). Training reads the
corpus through the same converter. The split (de-duplicated by body, then
stratified) is saved in the bundle as the texts the model reads; a TF-IDF +
logistic regression baseline is fitted on the same split (whole messages) and
kept in the lineage, so the fine-tuned model is compared where it was tested.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from joules.apps.common import fine_tune_classifier, minilm_dir, register_trained, train_summary
from joules.apps.mail.baselines import tfidf_baseline
from joules.apps.mail.dataset import DEFAULT_DATA, LABELS, load_corpus, split_corpus
from joules.apps.spam.dataset import FRACTIONS
from joules.bundle import Bundle, Preprocess, Split, SplitDataset, sha256_file
from joules.errors import require
from joules.registry import Registry, validate_name
from joules.runtime import Predictor, RuntimeOptions
from joules.runtime.admission import text_view
from joules.runtime.evaluate import evaluate
from joules.runtime.inputs import EmailConverter
from joules.runtime.preprocess import TextPreprocessor, cut_tail

log = logging.getLogger(__name__)
RULES_FILE = Path(__file__).with_name("rules.yaml")
BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# The recipe (docs/inputs.md, "The e-mail detector"): 128 tokens hold the sender, the subject, the
# first ~60 words of the body and its last 32 tokens (a footer, an unsubscribe link); 3 epochs at 5e-5
# fit about 30 minutes on 2 idle cores.
DEFAULT_MAX_LENGTH = 128
DEFAULT_TAIL_TOKENS = 32
DEFAULT_EPOCHS = 3
DEFAULT_LEARNING_RATE = 5e-5
# Characters of each text kept in the bundle's dataset.jsonl: past what max_length tokens can reach
# (checked for every row below), so the saved split gives the model exactly what the full text would.
CHARS_PER_TOKEN_BOUND = 16


def default_rules() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))
    return data


def email_preprocess(max_length: int = DEFAULT_MAX_LENGTH, tail_tokens: int = DEFAULT_TAIL_TOKENS) -> Preprocess:
    return Preprocess(kind="email", tokenizer="tokenizer.json", max_length=max_length, tail_tokens=tail_tokens)


def _cut(dataset: SplitDataset, pre: TextPreprocessor) -> SplitDataset:
    """Each text cut where the tokens the model reads are known to end (its start, and its end when the model
    reads ``tail_tokens``); a row whose tokens would change keeps its whole text."""
    limit = pre.max_length * CHARS_PER_TOKEN_BOUND
    splits = {}
    for name, split in dataset.splits.items():
        if pre.tail_tokens:
            cut = [t if len(t) <= 2 * limit else t[:limit] + "\n" + cut_tail(t, limit) for t in split.texts]
        else:
            cut = [t[:limit] for t in split.texts]
        whole = pre.encode(split.texts)
        short = pre.encode(cut)
        texts = [c if w.ids == s.ids else t for t, c, w, s in zip(split.texts, cut, whole, short, strict=True)]
        splits[name] = Split(texts, split.labels)
    return SplitDataset(splits)


def train_spam_email(
    *,
    registry: Registry,
    name: str = "spam-email",
    data: Path | None = None,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    max_length: int = DEFAULT_MAX_LENGTH,
    tail_tokens: int = DEFAULT_TAIL_TOKENS,
    promote: bool | None = None,
    progress: bool = True,
    baseline: bool = True,
    base_dir: Path | None = None,
    max_train_rows: int | None = None,
) -> dict[str, Any]:
    """Train, export, evaluate and register; return a summary (version, metrics, baseline, seconds).

    ``promote=None`` promotes when ``name`` has no production version yet. ``base_dir`` and
    ``max_train_rows`` exist for tests (a tiny model, a few rows).
    """
    validate_name(name)
    require("torch", "train")
    from joules.train import FineTuneConfig, write_text_bundle

    started = time.perf_counter()
    data_path = Path(data or DEFAULT_DATA)
    pre_spec = email_preprocess(max_length, tail_tokens)
    converter = EmailConverter.from_spec(pre_spec)
    corpus = load_corpus(data_path, converter)
    whole = split_corpus(corpus, seed=seed)
    base_dir = minilm_dir(base_dir)
    tokenizer = base_dir / "tokenizer.json"
    pre = TextPreprocessor.from_spec(tokenizer, pre_spec, ["input_ids", "attention_mask", "token_type_ids"])
    dataset = _cut(whole, pre)
    train, val = dataset["train"], dataset["validation"]
    if max_train_rows:
        train = Split(train.texts[:max_train_rows], train.labels[:max_train_rows])
    baselines = tfidf_baseline(whole, seed=seed) if baseline else {}
    cfg = FineTuneConfig(epochs=epochs, seed=seed, learning_rate=learning_rate)
    model, result = fine_tune_classifier(base_dir, pre, train, val, LABELS, cfg, positive="spam", progress=progress)
    train_seconds = time.perf_counter() - started
    lineage: dict[str, Any] = {
        "step": "train",
        "app": "spam-email",
        "base_model": BASE_MODEL,
        "data": {
            "path": str(data_path),
            "sha256": sha256_file(data_path),
            "files": corpus.files,
            "distinct_messages": len(corpus.mails),
            "duplicates_dropped": corpus.duplicates,
            "conflicting_labels_dropped": corpus.conflicts,
            "unreadable": corpus.unreadable,
        },
        "split": {"seed": seed, "fractions": FRACTIONS, "deduplicated": "by body", "stratified": True},
        "config": asdict(cfg),
        "reads": {"max_length": max_length, "tail_tokens": tail_tokens},
        "best_epoch": result.best_epoch,
        "history": result.history,
        "seconds": round(result.seconds, 1),
        "baselines": baselines,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    with tempfile.TemporaryDirectory(prefix="joules-train-") as tmp:
        bundle, gap = write_text_bundle(
            Path(tmp) / "bundle",
            model,
            tokenizer,
            name=name,
            labels=LABELS,
            max_length=max_length,
            rules=default_rules(),
            lineage=[lineage],
            dataset=dataset,
            positive_label="spam",
        )
        lineage["onnx_parity_max_abs"] = gap
        bundle = bundle.with_spec(preprocess=pre_spec)
        predictor = Predictor(text_view(bundle), options=RuntimeOptions(allow_spinning=True))
        metrics = {split: evaluate(predictor, dataset[split]) for split in ("validation", "test")}
        bundle = bundle.with_spec(metrics=metrics, lineage=(lineage,))
        bundle.save()
        bundle = Bundle.load(bundle.path)
        mv = register_trained(registry, bundle, name, promote)
    return train_summary(
        mv,
        metrics,
        baselines={k: v["test"] for k, v in baselines.items()},
        best_epoch=result.best_epoch,
        history=result.history,
        train_seconds=round(train_seconds, 1),
        total_seconds=round(time.perf_counter() - started, 1),
        onnx_parity_max_abs=gap,
    )
