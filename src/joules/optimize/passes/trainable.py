"""What pruning and distillation share: trainable weights, the teacher's soft labels,
the distillation loss, and writing a fine-tuned model back as a bundle.

Everything here needs torch (the ``train`` extra) and imports it lazily.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from joules.bundle import Bundle
from joules.errors import MissingExtraError, PassSkipped, require
from joules.optimize.passes.base import PassContext
from joules.optimize.passes.structure import PRUNED_KEY, apply_structure, encoder_layers

PROBE_STEPS = 4  # training steps timed to plan the epochs that fit the time budget
EPOCH_OVERHEAD = 1.35


def require_torch(pass_name: str) -> None:
    try:
        require("torch", "train")
        require("transformers", "train")
    except MissingExtraError as e:
        raise PassSkipped(f"{pass_name} needs PyTorch: {e}") from e


def weights_dir(bundle: Bundle, pass_name: str) -> Path:
    """The directory holding the bundle's trainable weights, or PassSkipped saying what is missing."""
    cfg, weights = bundle.file("weights_config"), bundle.file("weights")
    if not bundle.spec.preprocess.tokenized:
        raise PassSkipped(f"{pass_name} applies to text sequence classifiers; this model takes tensors")
    if cfg is None or weights is None:
        raise PassSkipped(
            f"{pass_name} fine-tunes the model and this bundle has no trainable weights "
            "(files roles weights_config + weights: a Hugging Face config.json and model.safetensors, "
            "as `joules train` and `joules import` of a Hugging Face directory write them)"
        )
    if cfg.parent != weights.parent:
        raise PassSkipped(f"{pass_name}: config.json and the weights must sit in the same directory")
    return cfg.parent


def load_trainable(bundle: Bundle, pass_name: str) -> Any:
    """The bundle's sequence classifier in PyTorch, pruned shapes included."""
    require_torch(pass_name)
    directory = weights_dir(bundle, pass_name)
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    if PRUNED_KEY not in config:
        from joules.train import load_sequence_classifier

        model = load_sequence_classifier(directory)
        encoder_layers(model, pass_name)
        return model
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from joules.bundle import scan_directory

    scan_directory(directory)
    cfg = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    cfg._attn_implementation = "eager"
    model = AutoModelForSequenceClassification.from_config(cfg, attn_implementation="eager")
    apply_structure(model, config[PRUNED_KEY])
    model.load_state_dict(load_file(str(directory / "model.safetensors")), strict=True)
    return model.eval()


def teacher_probabilities(bundle: Bundle, ctx: PassContext, split: str) -> np.ndarray:
    """The bundle's probabilities on ``split`` (ONNX Runtime), computed once per run."""
    key = f"probabilities:{bundle.path.resolve()}:{split}"
    if key not in ctx.cache:
        from joules.runtime import Predictor, RuntimeOptions

        predictor = Predictor(bundle, options=RuntimeOptions(max_batch_size=32), rules=None)
        ctx.cache[key] = predictor.predict_texts(ctx.texts(split), record=False).probabilities
    probs: np.ndarray = ctx.cache[key]
    return probs


def distillation_loss(soft: np.ndarray, *, temperature: float, alpha: float) -> Callable[[Any, Any, np.ndarray], Any]:
    """Hinton et al. (2015), "Distilling the Knowledge in a Neural Network", eq. 2 and section 2:

    ``alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T)``, where
    ``_T`` are the distributions softened by temperature T; the T^2 keeps the soft term's
    gradients on the same scale as the hard term's as T changes.
    """
    import torch
    import torch.nn.functional as F

    teacher_log = torch.from_numpy(np.log(np.clip(soft, 1e-7, 1.0)).astype(np.float32))

    def loss(logits: Any, labels: Any, idx: np.ndarray) -> Any:
        t = torch.log_softmax(teacher_log[torch.from_numpy(np.asarray(idx))] / temperature, dim=-1)
        s = torch.log_softmax(logits / temperature, dim=-1)
        kd = F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2
        return alpha * F.cross_entropy(logits, labels) + (1 - alpha) * kd

    return loss


def label_index(bundle: Bundle, ctx: PassContext, split: str) -> list[int]:
    assert ctx.dataset is not None  # checked by ctx.texts before any caller gets here
    return ctx.dataset[split].label_indices(bundle.spec.labels)


def fit_epochs(
    model: Any, pre: Any, texts: list[str], *, batch_size: int, epochs: int, max_seconds: float | None, seed: int
) -> int:
    """How many of ``epochs`` fit in ``max_seconds``, timed on a few training steps.

    A run cut short by its time limit stops with the learning rate still high
    (the schedule decays over the planned epochs); planning only the epochs that
    fit lets the schedule finish.
    """
    if max_seconds is None:
        return epochs
    import torch

    rng = np.random.default_rng(seed)
    sample = [texts[i] for i in rng.permutation(len(texts))[: batch_size * PROBE_STEPS]]
    enc = pre.encode(sample)
    model.train()
    started = time.perf_counter()
    for s in range(0, len(enc), batch_size):
        feeds = pre.batch(enc[s : s + batch_size], {})
        model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.sum().backward()
    model.zero_grad(set_to_none=True)
    per_step = (time.perf_counter() - started) / max(1, math.ceil(len(enc) / batch_size))
    # The optimizer step and each epoch's validation pass cost about a third more again.
    per_epoch = per_step * math.ceil(len(texts) / batch_size) * EPOCH_OVERHEAD
    return max(1, min(epochs, math.floor(max_seconds / per_epoch)))


class TeacherTuning(Protocol):
    """The fine-tuning settings a pass that trains against the teacher carries (prune, distill)."""

    @property
    def epochs(self) -> int: ...
    @property
    def learning_rate(self) -> float: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def temperature(self) -> float: ...
    @property
    def alpha(self) -> float: ...
    @property
    def max_seconds(self) -> float | None: ...


def fine_tune_on_teacher(model: Any, bundle: Bundle, ctx: PassContext, tuning: TeacherTuning) -> tuple[Any, int]:
    """Fine-tune ``model`` on the training split against the bundle's soft labels.

    Returns the FineTuneResult and the number of epochs planned (fewer than
    ``tuning.epochs`` when only those fit in ``tuning.max_seconds``).
    """
    batch_size, max_seconds = tuning.batch_size, tuning.max_seconds
    from joules.runtime.preprocess import TextPreprocessor
    from joules.train import FineTuneConfig, fine_tune

    soft = teacher_probabilities(bundle, ctx, "train")
    names = [i.name for i in bundle.spec.inputs]
    pre = TextPreprocessor.from_spec(bundle.tokenizer_path, bundle.spec.preprocess, names)
    texts = ctx.texts("train")
    started = time.perf_counter()
    planned = fit_epochs(
        model, pre, texts, batch_size=batch_size, epochs=tuning.epochs, max_seconds=max_seconds, seed=ctx.seed
    )
    if max_seconds is not None:
        max_seconds = max(1.0, max_seconds - (time.perf_counter() - started))
    cfg = FineTuneConfig(
        epochs=planned,
        learning_rate=tuning.learning_rate,
        batch_size=batch_size,
        seed=ctx.seed,
        max_seconds=max_seconds,
    )
    result = fine_tune(
        model,
        pre,
        (texts, label_index(bundle, ctx, "train")),
        (ctx.texts("validation"), label_index(bundle, ctx, "validation")),
        cfg,
        positive=bundle.spec.labels.index(bundle.spec.postprocess.positive),
        loss_fn=distillation_loss(soft, temperature=tuning.temperature, alpha=tuning.alpha),
        progress=ctx.progress,
    )
    return result, planned


def write_trained_bundle(model: Any, parent: Bundle, out: Path) -> tuple[Bundle, float]:
    """Export ``model`` as a bundle like ``parent`` (rules, labels, dataset, lineage); returns it and the parity gap."""
    from joules.bundle import SplitDataset
    from joules.train import write_text_bundle

    # The parent's own file: ctx.dataset may hold only a sample of the training rows.
    source = parent.file("dataset")
    bundle, gap = write_text_bundle(
        out,
        model,
        parent.tokenizer_path,
        name=parent.spec.name,
        labels=list(parent.spec.labels),
        max_length=parent.spec.preprocess.max_length,
        rules=parent.spec.rules,
        lineage=list(parent.spec.lineage),
        dataset=SplitDataset.read(source) if source is not None else None,
        positive_label=parent.spec.postprocess.positive_label,
    )
    return bundle, gap


def count_parameters(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))
