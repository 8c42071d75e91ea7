"""Write a text-classification bundle from a PyTorch model: ONNX graph, tokenizer,
trainable weights, the split it was measured on, metrics and lineage."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from joules.bundle import DATASET_FILE, Bundle, BundleSpec, Postprocess, Preprocess, SplitDataset, Task, TensorSpec
from joules.bundle.spec import DEFAULT_MAX_LENGTH
from joules.runtime.preprocess import TextPreprocessor
from joules.train.export import INPUT_NAMES, export_onnx

PARITY_TEXTS = [
    "Hi",
    "Are we still on for lunch tomorrow? Let me know.",
    "WINNER!! As a valued network customer you have been selected to receive a 900 prize reward! "
    "To claim call 09061701461. Claim code KL341. Valid 12 hours only.",
]


def write_text_bundle(
    out: Path,
    model: Any,
    tokenizer_file: Path,
    *,
    name: str,
    labels: list[str],
    max_length: int = DEFAULT_MAX_LENGTH,
    rules: dict[str, Any] | None = None,
    lineage: list[dict[str, Any]] | None = None,
    dataset: SplitDataset | None = None,
    positive_label: str | None = None,
) -> tuple[Bundle, float]:
    """Write the bundle into ``out`` (created); return it and the ONNX-vs-torch logit gap."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tokenizer_file, out / "tokenizer.json")
    pre = TextPreprocessor(out / "tokenizer.json", max_length, INPUT_NAMES)
    feeds = pre.batch(pre.encode(PARITY_TEXTS), {})
    gap = export_onnx(model, out / "model.onnx", feeds)
    # Trainable weights, for passes that fine-tune (pruning, distillation). Serving never reads them.
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {lab: i for i, lab in enumerate(labels)}
    model.save_pretrained(str(out), safe_serialization=True)
    files = {"weights_config": "config.json", "weights": "model.safetensors"}
    if dataset is not None:
        dataset.write(out / DATASET_FILE)
        files["dataset"] = DATASET_FILE
    for extra in out.glob("generation_config.json"):
        extra.unlink()
    spec = BundleSpec(
        name=name,
        task=Task.TEXT_CLASSIFICATION,
        inputs=tuple(TensorSpec(name=n, dtype="int64", shape=("batch", "sequence")) for n in INPUT_NAMES),
        preprocess=Preprocess(kind="text", tokenizer="tokenizer.json", max_length=max_length),
        postprocess=Postprocess(output="logits", labels=tuple(labels), positive_label=positive_label),
        rules=rules,
        lineage=tuple(lineage or ()),
        files=files,
    )
    spec.write(out)
    return Bundle.load(out), gap
