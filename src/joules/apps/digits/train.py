"""``joules train digits``: a small CNN on scikit-learn's handwritten digits (8 x 8 grayscale, 1,797 images).

The model reads what the bundle's image converter makes of a file, so it is
trained on exactly that: every training image is written as a PNG at sizes
from 8 to 100 pixels (nearest, bilinear and bicubic upscales, and the
inverted image, dark ink on light paper, as most scans are), then read back
through :class:`joules.runtime.inputs.ImageConverter`. Test accuracy is
measured the same way, through the ONNX bundle, on renderings the model never
saw.
"""

from __future__ import annotations

import io
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from joules.apps.common import register_trained, train_summary
from joules.bundle import Bundle, BundleSpec, Preprocess
from joules.errors import require
from joules.registry import Registry, validate_name
from joules.runtime import Predictor
from joules.runtime.inputs import ImageConverter

LABELS = [str(i) for i in range(10)]
INPUT = "image"
PREPROCESS = Preprocess(
    kind="image",
    input=INPUT,
    size=[8, 8],
    channels=1,
    layout="NCHW",
    mean=[0.0],
    std=[1.0],
    # The whole file, squeezed to 8 x 8: a digit drawn on a wide canvas keeps its strokes.
    resize="stretch",
)
FRACTIONS = {"train": 0.6, "validation": 0.2, "test": 0.2}
# Training renderings per image: (side in pixels, resampling filter name, inverted).
SIDES = (8, 12, 16, 24, 32, 48, 64, 100)
FILTERS = ("NEAREST", "BILINEAR", "BICUBIC")
# Test renderings: the acceptance check's 32 x 32 nearest-neighbour PNG first (the reported accuracy).
TEST_RENDERINGS = {
    "png_32_nearest": (32, "NEAREST", False, "PNG"),
    "png_8": (8, "NEAREST", False, "PNG"),
    "png_100_bilinear": (100, "BILINEAR", False, "PNG"),
    "png_48_inverted": (48, "BICUBIC", True, "PNG"),
    "jpeg_64_bilinear": (64, "BILINEAR", False, "JPEG"),
}
DEFAULT_EPOCHS = 30


def render(image: np.ndarray, side: int, resample: str, inverted: bool = False, fmt: str = "PNG") -> bytes:
    """One 8 x 8 digit (values 0..16) as an image file of ``side`` x ``side`` pixels."""
    from PIL import Image

    pixels = (image * 255 / 16).astype(np.uint8)  # as a user would write it (the acceptance check does this)
    if inverted:
        pixels = 255 - pixels
    im = Image.fromarray(pixels).resize((side, side), getattr(Image.Resampling, resample))
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def split_indices(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Stratified 60/20/20 split of image indices."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {k: [] for k in FRACTIONS}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_train = round(len(idx) * FRACTIONS["train"])
        n_val = round(len(idx) * FRACTIONS["validation"])
        parts["train"] += idx[:n_train].tolist()
        parts["validation"] += idx[n_train : n_train + n_val].tolist()
        parts["test"] += idx[n_train + n_val :].tolist()
    return {k: np.sort(np.asarray(v)) for k, v in parts.items()}


def _module() -> Any:
    import torch

    class DigitsCNN(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = torch.nn.Sequential(
                torch.nn.Conv2d(1, 32, 3, padding=1),
                torch.nn.ReLU(),
                torch.nn.Conv2d(32, 64, 3, padding=1),
                torch.nn.ReLU(),
                torch.nn.MaxPool2d(2),
            )
            self.head = torch.nn.Sequential(
                torch.nn.Flatten(), torch.nn.Dropout(0.25), torch.nn.Linear(64 * 4 * 4, 128), torch.nn.ReLU()
            )
            self.out = torch.nn.Linear(128, len(LABELS))

        def forward(self, x: Any) -> Any:
            return self.out(self.head(self.features(x)))

    return DigitsCNN()


def _training_set(
    images: np.ndarray, labels: np.ndarray, conv: ImageConverter, rng: np.random.Generator, variants: int
) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for img, y in zip(images, labels, strict=True):
        xs.append(conv.admit(render(img, 8, "NEAREST")))
        ys.append(y)
        for _ in range(variants):
            side = int(rng.choice(SIDES))
            xs.append(conv.admit(render(img, side, str(rng.choice(FILTERS)), inverted=bool(rng.random() < 0.5))))
            ys.append(y)
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def _rendered(images: np.ndarray, conv: ImageConverter, rendering: tuple[int, str, bool, str]) -> np.ndarray:
    side, resample, inverted, fmt = rendering
    return np.stack([conv.admit(render(img, side, resample, inverted, fmt)) for img in images])


def _fit(x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray, *, epochs: int, seed: int) -> tuple[Any, list]:
    import copy

    import torch

    torch.manual_seed(seed)
    model = _module()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * -(-len(x) // 64))
    gen = torch.Generator().manual_seed(seed)
    xt, yt, xvt = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(xv)
    history, best, best_state = [], -1.0, None
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(xt), generator=gen)
        losses = []
        for s in range(0, len(order), 64):
            idx = order[s : s + 64]
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        model.eval()
        with torch.no_grad():
            acc = float((model(xvt).argmax(1).numpy() == yv).mean())
        history.append({"epoch": epoch, "train_loss": round(float(np.mean(losses)), 5), "validation_accuracy": acc})
        if acc >= best:
            best, best_state = acc, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return model.eval(), history


def accuracy_metrics(y: np.ndarray, probs: np.ndarray, *, samples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Accuracy with a 95 % bootstrap interval, and macro-averaged F1 over the classes."""
    pred = probs.argmax(1)
    correct = (pred == y).astype(np.float64)
    rng = np.random.default_rng(seed)
    boots = [correct[rng.integers(0, len(y), len(y))].mean() for _ in range(samples)]
    f1s = []
    for c in range(probs.shape[1]):
        tp = np.sum((pred == c) & (y == c))
        denom = np.sum(pred == c) + np.sum(y == c)
        f1s.append(2 * tp / denom if denom else 0.0)
    return {
        "n": len(y),
        "accuracy": float(correct.mean()),
        "accuracy_ci95": [float(v) for v in np.percentile(boots, [2.5, 97.5])],
        "f1_macro": float(np.mean(f1s)),
    }


def train_digits(
    *,
    registry: Registry,
    name: str = "digits",
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    variants: int = 4,
    promote: bool | None = None,
) -> dict[str, Any]:
    """Train, export, measure through the ONNX bundle and register; return a summary."""
    validate_name(name)
    require("torch", "train")
    require("sklearn", "train")
    require("PIL", "image")
    import torch
    from sklearn.datasets import load_digits

    from joules.train import export_tensor_model

    started = time.perf_counter()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    digits = load_digits()
    images, labels = digits.images, digits.target.astype(np.int64)
    split = split_indices(labels, seed)
    pre = PREPROCESS
    conv = ImageConverter.from_spec(pre)
    rng = np.random.default_rng(seed)
    x, y = _training_set(images[split["train"]], labels[split["train"]], conv, rng, variants)
    xv = _rendered(images[split["validation"]], conv, TEST_RENDERINGS["png_32_nearest"])
    model, history = _fit(x, y, xv, labels[split["validation"]], epochs=epochs, seed=seed)
    train_seconds = time.perf_counter() - started

    with tempfile.TemporaryDirectory(prefix="joules-train-") as tmp:
        out = Path(tmp) / "bundle"
        out.mkdir()
        gap = export_tensor_model(model, out / "model.onnx", x[:16], input_name=INPUT)
        lineage: dict[str, Any] = {
            "step": "train",
            "app": "digits",
            "data": {"source": "sklearn.datasets.load_digits", "images": len(images)},
            "split": {"seed": seed, "fractions": FRACTIONS, "sizes": {k: len(v) for k, v in split.items()}},
            "config": {"epochs": epochs, "variants_per_image": variants, "sides": SIDES, "filters": FILTERS},
            "history": history,
            "onnx_parity_max_abs": gap,
            "seconds": round(train_seconds, 1),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        spec = BundleSpec.from_dict(
            {
                "name": name,
                "task": "classification",
                "inputs": [{"name": INPUT, "dtype": "float32", "shape": ["batch", 1, 8, 8]}],
                "preprocess": pre.to_dict(),
                "postprocess": {"output": "logits", "labels": LABELS, "activation": "softmax"},
                "lineage": [lineage],
            }
        )
        spec.write(out)
        predictor = Predictor(Bundle.load(out))
        metrics: dict[str, Any] = {}
        test = images[split["test"]]
        y_test = labels[split["test"]]
        by_rendering = {}
        for key, rendering in TEST_RENDERINGS.items():
            probs = predictor.predict_tensors({INPUT: _rendered(test, conv, rendering)}, record=False).probabilities
            by_rendering[key] = accuracy_metrics(y_test, probs)
        metrics["test"] = {
            **by_rendering["png_32_nearest"],
            "rendering": "png_32_nearest",
            "by_rendering": by_rendering,
        }
        val_probs = predictor.predict_tensors({INPUT: xv}, record=False).probabilities
        metrics["validation"] = {
            **accuracy_metrics(labels[split["validation"]], val_probs),
            "rendering": "png_32_nearest",
        }
        bundle = Bundle.load(out).with_spec(metrics=metrics)
        bundle.save()
        mv = register_trained(registry, bundle, name, promote)
    return train_summary(
        mv,
        metrics,
        train_seconds=round(train_seconds, 1),
        total_seconds=round(time.perf_counter() - started, 1),
        onnx_parity_max_abs=gap,
    )
