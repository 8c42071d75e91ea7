"""fine_tune on a tiny BERT and real messages: which epoch is kept, seeding, config errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from joules.apps.spam.dataset import LABELS, load_messages, split_messages
from joules.errors import ConfigError
from joules.quality import f1_score
from joules.runtime.preprocess import TextPreprocessor
from joules.train import FineTuneConfig, fine_tune, load_sequence_classifier
from joules.train.finetune import predict_logits
from tests.helpers import assert_beats_chance


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


def test_keep_best_restores_the_best_epochs_weights(tiny_hf_dir: Path) -> None:
    """The third epoch trains on flipped labels, so it is the worst; the model handed back must
    compute what the model computed at the end of the best epoch (its outputs, not its number)."""
    import torch

    ds = split_messages(load_messages(), seed=0)
    train, val = ds["train"], ds["validation"]
    torch.manual_seed(0)
    model = load_sequence_classifier(tiny_hf_dir, num_labels=2)
    pre = TextPreprocessor(tiny_hf_dir / "tokenizer.json", 64, ["input_ids", "attention_mask", "token_type_ids"])
    texts, y_val = val.texts[:300], val.label_indices(tuple(LABELS))[:300]
    rows = 1200  # 400 rows teach the tiny model nothing (validation F1 0.0 every epoch)
    steps_per_epoch = math.ceil(rows / 32)
    calls = 0
    at_epoch_end: dict[int, np.ndarray] = {}

    def loss(logits: torch.Tensor, y: torch.Tensor, _idx: np.ndarray) -> torch.Tensor:
        nonlocal calls
        if calls and calls % steps_per_epoch == 0:  # first step of a new epoch: the weights are the last one's
            at_epoch_end[calls // steps_per_epoch] = predict_logits(model, pre, texts)
            model.train()
        calls += 1
        target = 1 - y if calls > 2 * steps_per_epoch else y  # epoch 3 learns the opposite
        return torch.nn.functional.cross_entropy(logits, target)

    result = fine_tune(
        model,
        pre,
        (train.texts[:rows], train.label_indices(tuple(LABELS))[:rows]),
        (texts, y_val),
        FineTuneConfig(epochs=3, learning_rate=2e-3, batch_size=32),
        loss_fn=loss,
        progress=False,
    )
    f1s = [h["validation_f1"] for h in result.history]
    assert len(f1s) == 3 and f1s[2] < max(f1s[:2]), f"epoch 3 (flipped labels) should be worst: {f1s}"
    assert result.best_epoch in (1, 2) and sorted(at_epoch_end) == [1, 2]
    kept = predict_logits(result.model, pre, texts)
    np.testing.assert_allclose(kept, at_epoch_end[result.best_epoch], atol=1e-5)
    other = at_epoch_end[3 - result.best_epoch]
    assert np.abs(kept - other).max() > 1e-2, "epochs 1 and 2 gave the same outputs: the check would be empty"
    assert f1_score(np.asarray(y_val) == 1, kept.argmax(1) == 1) == max(f1s)
    test = ds["test"]  # rows neither trained on nor used to pick the epoch
    y_test = np.asarray(test.label_indices(tuple(LABELS))) == LABELS.index("spam")
    assert_beats_chance(y_test, predict_logits(result.model, pre, test.texts).argmax(1) == 1, "kept tiny model")


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
