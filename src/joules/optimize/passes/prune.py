"""``prune``: structured pruning of attention heads and FFN neurons, physically removed.

Importance is the first-order Taylor estimate of how much the loss changes when
a unit is masked out: the magnitude of the loss gradient with respect to a
mask of ones on the unit's output, summed over training rows (Michel, Levy and
Neubig, "Are Sixteen Heads Really Better than One?", NeurIPS 2019, eq. 5;
Molchanov et al., "Importance Estimation for Neural Network Pruning", CVPR
2019, for neurons). Scores are normalised per layer (Michel et al. 4.1), and
each layer keeps its most important ``1 - sparsity`` share of heads and of FFN
neurons, at least one head. The kept rows and columns are copied into smaller
Linear layers, so the exported graph has smaller matrices and really runs
faster; a short fine-tune on the teacher's soft labels then recovers accuracy.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from joules.bundle import Bundle
from joules.errors import ConfigError, OptimizeError, PassSkipped
from joules.optimize.passes.base import PassContext, PassResult
from joules.optimize.passes.structure import PRUNED_KEY, encoder_layers, prune_layer, structure_of
from joules.optimize.passes.trainable import (
    count_parameters,
    fine_tune_on_teacher,
    label_index,
    load_trainable,
    write_trained_bundle,
)


def importance(model: Any, bundle: Bundle, texts: list[str], labels: list[int]) -> tuple[list[Any], list[Any]]:
    """Per-layer |dLoss/dmask| of every head and FFN neuron, each layer normalised to unit L2 norm."""
    import torch

    from joules.runtime.preprocess import TextPreprocessor

    layers = encoder_layers(model, "prune")
    head_masks = [torch.ones(la.attention.self.num_attention_heads, requires_grad=True) for la in layers]
    ffn_masks = [torch.ones(la.intermediate.dense.out_features, requires_grad=True) for la in layers]
    hooks = []
    for la, hm, fm in zip(layers, head_masks, ffn_masks, strict=True):
        d = la.attention.self.attention_head_size

        def on_attention(module: Any, inputs: Any, output: Any, hm: Any = hm, d: int = d) -> Any:
            ctx = output[0]
            shape = ctx.shape
            ctx = (ctx.reshape(*shape[:-1], -1, d) * hm.view(-1, 1)).reshape(shape)
            return (ctx, *output[1:])

        def on_ffn(module: Any, inputs: Any, output: Any, fm: Any = fm) -> Any:
            return output * fm

        hooks.append(la.attention.self.register_forward_hook(on_attention))
        hooks.append(la.intermediate.register_forward_hook(on_ffn))
    pre = TextPreprocessor.from_spec(
        bundle.tokenizer_path, bundle.spec.preprocess, [i.name for i in bundle.spec.inputs]
    )
    enc = pre.encode(texts)
    order = np.argsort([len(e.ids) for e in enc], kind="stable")
    y = torch.tensor(labels, dtype=torch.long)
    head_score = [torch.zeros_like(m) for m in head_masks]
    ffn_score = [torch.zeros_like(m) for m in ffn_masks]
    model.eval()  # no dropout: the scores should not depend on random masks
    try:
        for s in range(0, len(order), 16):
            idx = order[s : s + 16]
            feeds = pre.batch([enc[i] for i in idx], {})
            logits = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits
            loss = torch.nn.functional.cross_entropy(logits, y[torch.from_numpy(idx)])
            grads = torch.autograd.grad(loss, [*head_masks, *ffn_masks])
            for acc, g in zip([*head_score, *ffn_score], grads, strict=True):
                acc += g.abs().detach()
    finally:
        for h in hooks:
            h.remove()
    norm = lambda v: v / (v.norm() + 1e-12)  # noqa: E731
    return [norm(v) for v in head_score], [norm(v) for v in ffn_score]


@dataclass(frozen=True, kw_only=True)
class Prune:
    name: ClassVar[str] = "prune"
    sparsity: float = 0.5  # share of heads and of FFN neurons removed in every layer
    heads: bool = True
    ffn: bool = True
    importance_rows: int = 256
    epochs: int = 1  # the short fine-tune that recovers accuracy
    learning_rate: float = 5e-5
    batch_size: int = 16
    temperature: float = 2.0
    alpha: float = 0.5  # weight of the hard labels against the teacher's soft labels
    max_seconds: float | None = None  # set by the run from its time budget

    def __post_init__(self) -> None:
        if not 0 < self.sparsity < 1:
            raise ConfigError(f"prune sparsity must be in (0, 1), got {self.sparsity}")
        if not (self.heads or self.ffn):
            raise ConfigError("prune needs heads or ffn (or both) to prune")
        if not 0 <= self.alpha <= 1 or self.temperature <= 0:
            raise ConfigError(f"alpha must be in [0, 1] and temperature > 0, got {self.alpha}, {self.temperature}")

    def __call__(self, bundle: Bundle, out: Path, ctx: PassContext) -> PassResult:
        import torch

        started = time.perf_counter()
        model = load_trainable(bundle, "prune")
        ctx.texts("train")  # PassSkipped when there is no dataset
        before = structure_of(model)
        params_before = count_parameters(model)
        rng = np.random.default_rng(ctx.seed)
        train_texts = ctx.texts("train")
        rows = rng.permutation(len(train_texts))[: self.importance_rows]
        labels = label_index(bundle, ctx, "train")
        head_score, ffn_score = importance(model, bundle, [train_texts[i] for i in rows], [labels[i] for i in rows])
        for layer, hs, fs in zip(encoder_layers(model, "prune"), head_score, ffn_score, strict=True):
            n_heads, n_ffn = len(hs), len(fs)
            keep_h = max(1, n_heads - math.floor(n_heads * self.sparsity)) if self.heads else n_heads
            keep_f = max(1, n_ffn - math.floor(n_ffn * self.sparsity)) if self.ffn else n_ffn
            heads = torch.topk(hs, keep_h).indices.tolist()
            neurons = torch.topk(fs, keep_f).indices.tolist()
            prune_layer(layer, heads, neurons)
        after = structure_of(model)
        if after == before:
            raise PassSkipped(f"sparsity {self.sparsity} removes nothing from layers shaped {before}")
        setattr(model.config, PRUNED_KEY, after)
        params_after = count_parameters(model)
        result, planned = fine_tune_on_teacher(model, bundle, ctx, self)
        new, gap = write_trained_bundle(result.model, bundle, out)
        _check_config(new, after)
        details = {
            "structure_before": before,
            "structure_after": after,
            "parameters_before": params_before,
            "parameters_after": params_after,
            "importance_rows": len(rows),
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


def _check_config(bundle: Bundle, structure: dict[str, list[int]]) -> None:
    cfg = bundle.file("weights_config")
    saved = json.loads(cfg.read_text(encoding="utf-8")).get(PRUNED_KEY) if cfg else None
    if saved != structure:
        raise OptimizeError(f"the pruned shapes were not saved with the weights (config.json has {saved!r})")
