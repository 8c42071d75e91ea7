"""``joules train spam-email`` end to end on a small real corpus with a tiny model (the real recipe is slow)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np

from joules.apps.mail.train import CHARS_PER_TOKEN_BOUND
from joules.bundle import SplitDataset
from joules.registry import Registry
from joules.runtime import Predictor
from joules.runtime.admission import text_view
from joules.runtime.inputs import EmailConverter
from joules.settings import Settings


def test_the_bundle_is_served_on_raw_email(mail_home: Path) -> None:
    reg = Registry(Settings(home=mail_home))
    mv = reg.get("spam-email")
    assert mv.stage == "production" and list(mv.labels) == ["ham", "spam"]
    pre = reg.load("spam-email").spec.preprocess
    assert (pre.kind, pre.max_length, pre.reads) == ("email", 64, ["from", "subject", "body"])
    assert pre.tail_tokens == 32, "the recipe reads the end of a long message too"
    assert mv.lineage[0]["reads"] == {"max_length": 64, "tail_tokens": 32}
    assert {"f1", "f1_ci95", "roc_auc", "n"} <= set(mv.metrics["test"])
    train = mv.lineage[0]
    assert train["app"] == "spam-email" and train["split"]["deduplicated"] == "by body"
    assert train["data"]["duplicates_dropped"] >= 1 and train["data"]["conflicting_labels_dropped"] == 2
    assert list(train["data"]["unreadable"]) == ["spam-2/garbage.eml"]
    baseline = train["baselines"]["tfidf_lr"]
    assert baseline["test"]["n"] == mv.metrics["test"]["n"]  # the same split
    assert 0 <= baseline["test"]["f1"] <= 1


def test_the_saved_split_gives_the_model_what_the_raw_message_does(mail_home: Path, small_corpus: Path) -> None:
    bundle = Registry(Settings(home=mail_home)).load("spam-email")
    saved = SplitDataset.read(bundle.path / "dataset.jsonl")
    texts = [t for name in ("train", "validation", "test") for t in saved[name].texts]
    assert all(t.startswith(("From: ", "Subject: ")) for t in texts)
    # Cut to bound what the bundle carries (its start and its end), except where cutting would change the
    # tokens the model reads.
    limit = 64 * CHARS_PER_TOKEN_BOUND
    assert sum(len(t) > 2 * limit + 1 for t in texts) < len(texts) / 10
    conv = EmailConverter.from_spec(bundle.spec.preprocess)
    raw = []
    with tarfile.open(small_corpus) as tar:
        for m in tar:
            f = tar.extractfile(m) if m.isfile() and "spam-1" in m.name else None
            if f is not None:
                raw.append(f.read())
    predictor = Predictor(text_view(bundle))
    from_raw = predictor.predict_texts([conv.admit(r) for r in raw[:10]]).probabilities
    by_text = {conv.admit(r): i for i, r in enumerate(raw[:10])}
    from_saved = [(t, k) for t in texts for k in by_text if t[:limit] == k[:limit]]
    assert from_saved  # spam-1 messages are in the saved split, cut or whole
    assert any(t != k for t, k in from_saved), "one of them is cut"
    for t, full in from_saved:
        np.testing.assert_allclose(predictor.predict_texts([t]).probabilities[0], from_raw[by_text[full]], atol=1e-6)
