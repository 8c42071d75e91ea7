"""The pass interface: a bundle in, a bundle out, plus what the pass did.

A pass is a frozen keyword-only dataclass: its fields are its settings (saved
in the lineage of every bundle it produces) and calling it does the work. A
pass that does not apply to a model raises ``PassSkipped`` with the reason.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from joules.bundle import DATASET_FILE, Bundle, SplitDataset
from joules.bundle.graph import graph_inputs
from joules.errors import PassSkipped


@dataclass
class PassContext:
    """What passes may use besides the bundle they transform. One per optimize run."""

    workdir: Path
    dataset: SplitDataset | None = None
    seed: int = 0
    progress: bool = False
    # time.monotonic() after which training passes must stop taking steps (None: no limit).
    deadline: float | None = None
    # Shared results (e.g. the teacher's soft labels), so compositions don't redo work.
    cache: dict[str, Any] = field(default_factory=dict)

    def seconds_left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def texts(self, split: str) -> list[str]:
        if self.dataset is None:
            raise PassSkipped("this pass needs the labelled data the model was trained on (the bundle has no dataset)")
        return list(self.dataset[split].texts)


@dataclass(frozen=True)
class PassResult:
    bundle: Bundle
    details: dict[str, Any]
    seconds: float


@runtime_checkable
class Pass(Protocol):
    """Bundle in, bundle (written into ``out``) out, plus what it did."""

    name: ClassVar[str]

    def __call__(self, bundle: Bundle, out: Path, ctx: PassContext) -> PassResult: ...


def settings_of(p: Any) -> dict[str, Any]:
    """A pass's settings as plain data for the lineage."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(p).items()}


def describe(p: Any) -> dict[str, Any]:
    return {"pass": p.name, "settings": settings_of(p)}


def derive_bundle(
    parent: Bundle,
    out: Path,
    write_model: Any,
    *,
    extra_files: dict[str, Path] | None = None,
    **spec_changes: Any,
) -> Bundle:
    """A new bundle in ``out``: the parent's spec, tokenizer and dataset, a new model.onnx.

    ``write_model(path)`` writes the new graph. The parent's trainable weights
    (files roles "weights"/"weights_config") describe the parent's graph, not
    the new one, so they are not carried over; a pass that produces new
    weights passes them in ``extra_files`` ({role: file}). ``spec_changes``
    override joules.yaml fields (a student with its own output, say).
    """
    out.mkdir(parents=True, exist_ok=True)
    write_model(out / "model.onnx")
    if parent.spec.preprocess.tokenized:  # text and e-mail bundles carry their tokenizer
        shutil.copyfile(parent.tokenizer_path, out / parent.spec.preprocess.tokenizer)
    files: dict[str, str] = {}
    dataset = parent.file("dataset")
    if dataset is not None:
        shutil.copyfile(dataset, out / DATASET_FILE)
        files["dataset"] = DATASET_FILE
    for role, src in (extra_files or {}).items():
        if src.parent.resolve() != out.resolve():
            shutil.copyfile(src, out / src.name)
        files[role] = src.name
    inputs = graph_inputs(out / "model.onnx")
    if sorted(i.name for i in inputs) == sorted(i.name for i in parent.spec.inputs):
        inputs = parent.spec.inputs  # keep the declared shapes and names of dimensions
    changes: dict[str, Any] = {"model": "model.onnx", "inputs": inputs, "files": files, "metrics": {}}
    replace(parent.spec, **{**changes, **spec_changes}).write(out)
    return Bundle.load(out)
