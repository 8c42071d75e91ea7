"""fine_tune on a tiny BERT and real messages: which epoch is kept, seeding, config errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from joules.apps.spam.dataset import LABELS, load_messages, split_messages
from joules.errors import ConfigError
from joules.runtime.preprocess import TextPreprocessor
from joules.train import FineTuneConfig, fine_tune, load_sequence_classifier
from joules.train.finetune import predict_logits


def _run(tiny_hf_dir: Path, **cfg: object) -> tuple[object, object, list[str]]:
    import torch

    ds = split_messages(load_messages(), seed=0)
    train, val = ds["train"], ds["validation"]
    torch.manual_seed(0)
    model = load_sequence_classifier(tiny_hf_dir, num_labels=2)
    pre = TextPreprocessor(tiny_hf_dir / "tokenizer.json", 64, ["input_ids", "attention_mask", "token_type_ids"])
    texts = val.texts[:300]
    result = fine_tune(
        model,
        pre,
        (train.texts[:400], train.label_indices(tuple(LABELS))[:400]),
        (texts, val.label_indices(tuple(LABELS))[:300]),
        FineTuneConfig(epochs=3, learning_rate=2e-3, **cfg),  # type: ignore[arg-type]
        progress=False,
    )
    return result, predict_logits(model, pre, texts), texts


def test_keep_best_takes_the_epoch_with_the_best_validation_f1(tiny_hf_dir: Path) -> None:
    result, _, _ = _run(tiny_hf_dir)
    f1s = [h["validation_f1"] for h in result.history]  # type: ignore[attr-defined]
    assert len(f1s) == 3
    assert result.best_epoch == 1 + int(np.argmax(f1s))  # type: ignore[attr-defined]


def test_keep_last_and_same_seed_same_model(tiny_hf_dir: Path) -> None:
    a, logits_a, _ = _run(tiny_hf_dir, keep="last")
    b, logits_b, _ = _run(tiny_hf_dir, keep="last")
    assert a.best_epoch == 3  # type: ignore[attr-defined]
    assert a.history == b.history  # type: ignore[attr-defined]
    np.testing.assert_allclose(logits_a, logits_b, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"keep": "middle"}, "keep must be"),
        ({"epochs": 0}, "epochs must be"),
        ({"learning_rate": 2.0}, "learning_rate"),
    ],
)
def test_config_errors_name_the_value(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FineTuneConfig(**kwargs)  # type: ignore[arg-type]
