"""Fine-tune a sequence classifier on CPU.

Batches are built from rows of similar token length (sorted within shuffled
pools), so little compute is spent on padding, the same trick the Predictor
uses at inference.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from joules.errors import ConfigError
from joules.quality import f1_score
from joules.runtime.preprocess import TextPreprocessor


@dataclass(frozen=True, kw_only=True)
class FineTuneConfig:
    epochs: int = 3
    batch_size: int = 16
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    seed: int = 0
    threads: int = 0  # 0: torch's default
    pool_batches: int = 16  # rows are length-sorted within pools of this many batches
    # Stop taking steps after this many seconds (the epoch in progress is then validated and
    # training ends): optimization passes share a wall-clock budget. None: no limit.
    max_seconds: float | None = None
    # Which weights to keep: "best" (the epoch with the best validation F1) or "last".
    keep: str = "best"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 < self.learning_rate < 1:
            raise ConfigError(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        if self.keep not in ("best", "last"):
            raise ConfigError(f"keep must be 'best' or 'last', got {self.keep!r}")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ConfigError(f"max_seconds must be > 0 or None, got {self.max_seconds}")


@dataclass
class FineTuneResult:
    model: Any
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def _batches(lengths: np.ndarray, cfg: FineTuneConfig, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(len(lengths))
    pool = cfg.batch_size * cfg.pool_batches
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + cfg.batch_size] for i in range(0, len(chunk), cfg.batch_size)]
    rng.shuffle(batches)
    return batches


def predict_logits(model: Any, pre: TextPreprocessor, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    import torch

    enc = pre.encode(texts)
    lengths = np.array([len(e.ids) for e in enc])
    order = np.argsort(lengths, kind="stable")
    out: np.ndarray | None = None
    model.eval()
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            feeds = pre.batch([enc[i] for i in idx], {})
            logits = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.float().numpy()
            if out is None:
                out = np.empty((len(texts), logits.shape[1]), dtype=np.float32)
            out[idx] = logits
    assert out is not None
    return out


def fine_tune(
    model: Any,
    pre: TextPreprocessor,
    train: tuple[Sequence[str], Sequence[int]],
    validation: tuple[Sequence[str], Sequence[int]],
    cfg: FineTuneConfig,
    *,
    positive: int = 1,
    loss_fn: Callable[[Any, Any, np.ndarray], Any] | None = None,
    progress: bool = True,
) -> FineTuneResult:
    """Train ``model`` on ``train``; keep the weights of the epoch with the best validation F1.

    ``loss_fn(logits, labels_tensor, batch_indices)`` replaces cross-entropy
    (distillation passes soft labels this way).
    """
    import torch
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    texts, labels = list(train[0]), np.asarray(train[1], dtype=np.int64)
    enc = pre.encode(texts)
    lengths = np.array([len(e.ids) for e in enc])
    steps_per_epoch = math.ceil(len(texts) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, int(total * cfg.warmup_fraction))
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    params = [
        {
            "params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
            "weight_decay": cfg.weight_decay,
        },
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
    )
    result = FineTuneResult(model=model, best_epoch=0)
    best_f1, best_state = -1.0, None
    started = time.perf_counter()
    bar = tqdm(total=total, desc="fine-tune", unit="step", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    out_of_time = False
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        losses = []
        for idx in _batches(lengths, cfg, rng):
            if cfg.max_seconds is not None and time.perf_counter() - started > cfg.max_seconds:
                out_of_time = True
                break
            feeds = pre.batch([enc[i] for i in idx], {})
            logits = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits
            y = torch.from_numpy(labels[idx])
            loss = loss_fn(logits, y, idx) if loss_fn else torch.nn.functional.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(epoch=epoch, loss=f"{np.mean(losses[-20:]):.4f}")
            bar.update(1)
        if not losses:  # the time limit came before this epoch's first step
            break
        val_logits = predict_logits(model, pre, validation[0])
        val_f1 = f1_score(np.asarray(validation[1]) == positive, val_logits.argmax(1) == positive)
        result.history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "validation_f1": val_f1})
        bar.write(f"epoch {epoch}: train loss {np.mean(losses):.4f}, validation F1 {val_f1:.4f}", file=sys.stderr)
        if cfg.keep == "last" or val_f1 > best_f1:
            best_f1, result.best_epoch = val_f1, epoch
            best_state = copy.deepcopy(model.state_dict())
        if out_of_time:
            bar.write(f"stopped after {time.perf_counter() - started:.0f} s (max_seconds {cfg.max_seconds:g})")
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    result.seconds = time.perf_counter() - started
    result.model = model.eval()
    return result
