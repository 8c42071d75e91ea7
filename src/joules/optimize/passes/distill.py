"""``distill``: a smaller transformer student initialised from the teacher.

The student keeps every other encoder layer of the teacher, ending at its top
layer (DistilBERT's initialisation: Sanh et al., "DistilBERT, a distilled
version of BERT", 2019, section 3), with the teacher's embeddings, pooler and
classifier; it is trained on the training split against the teacher's soft
labels and the true labels (``trainable.distillation_loss``). The other
student, a bag-of-n-grams model, is in ``ngram.py``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from joules.bundle import Bundle
from joules.errors import ConfigError, PassSkipped
from joules.optimize.passes.base import PassContext, PassResult
from joules.optimize.passes.structure import PRUNED_KEY, encoder_layers
from joules.optimize.passes.trainable import (
    count_parameters,
    fine_tune_on_teacher,
    load_trainable,
    write_trained_bundle,
)


def student_layers(teacher_layers: int, keep: int) -> list[int]:
    """Evenly spaced teacher layers ending at the top one: 6 -> 3 keeps [1, 3, 5]; 6 -> 2 keeps [2, 5]."""
    return [round((i + 1) * teacher_layers / keep) - 1 for i in range(keep)]


def make_student(teacher: Any, keep: int) -> tuple[Any, list[int]]:
    import torch

    layers = encoder_layers(teacher, "distill")
    if not 1 <= keep < len(layers):
        raise PassSkipped(f"a {keep}-layer student is not smaller than the {len(layers)}-layer teacher")
    chosen = student_layers(len(layers), keep)
    student = copy.deepcopy(teacher)
    student.base_model.encoder.layer = torch.nn.ModuleList([student.base_model.encoder.layer[i] for i in chosen])
    student.config.num_hidden_layers = keep
    pruned = getattr(student.config, PRUNED_KEY, None)
    if isinstance(pruned, dict):
        setattr(student.config, PRUNED_KEY, {k: [v[i] for i in chosen] for k, v in pruned.items()})
    return student, chosen


@dataclass(frozen=True, kw_only=True)
class DistillTransformer:
    name: ClassVar[str] = "distill"
    student: str = "transformer"
    layers: int = 3
    epochs: int = 3
    learning_rate: float = 1e-4  # higher than fine-tuning's 5e-5: the student has to move further
    batch_size: int = 16
    temperature: float = 2.0
    alpha: float = 0.5
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.student != "transformer":
            raise ConfigError(f"DistillTransformer builds transformer students, not {self.student!r}")
        if self.layers < 1:
            raise ConfigError(f"student layers must be >= 1, got {self.layers}")
        if not 0 <= self.alpha <= 1 or self.temperature <= 0:
            raise ConfigError(f"alpha must be in [0, 1] and temperature > 0, got {self.alpha}, {self.temperature}")

    def __call__(self, bundle: Bundle, out: Path, ctx: PassContext) -> PassResult:
        started = time.perf_counter()
        teacher = load_trainable(bundle, "distill")
        ctx.texts("train")  # PassSkipped when there is no dataset
        student, chosen = make_student(teacher, self.layers)
        del teacher
        result, planned = fine_tune_on_teacher(student, bundle, ctx, self)
        new, gap = write_trained_bundle(result.model, bundle, out)
        details = {
            "student": "transformer",
            "teacher_layers_kept": chosen,
            "parameters": count_parameters(result.model),
            "fine_tune": {
                "epochs_planned": planned,
                "max_seconds": self.max_seconds,
                "best_epoch": result.best_epoch,
                "history": result.history,
                "seconds": round(result.seconds, 1),
            },
            "onnx_parity_max_abs": gap,
        }
        return PassResult(new, details, time.perf_counter() - started)
