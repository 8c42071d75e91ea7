"""The shape of a BERT-layout encoder: which layers there are, and cutting heads and FFN neurons.

Pruning cuts a model to a structure; loading a pruned bundle's weights rebuilds
that structure first (``trainable.load_trainable``). Both use this module, so
neither imports the other. Needs torch, imported where used.
"""

from __future__ import annotations

from typing import Any

from joules.errors import ConfigError, PassSkipped

# config.json key recording a pruned model's per-layer shapes, so it can be rebuilt and reloaded.
PRUNED_KEY = "joules_pruned"


def encoder_layers(model: Any, pass_name: str) -> list[Any]:
    """The encoder layers of a BERT-layout model (BERT, RoBERTa, ELECTRA, XLM-R, MiniLM ...)."""
    base = getattr(model, "base_model", None)
    layers: Any = getattr(getattr(base, "encoder", None), "layer", None)
    ok = layers is not None and len(layers) > 0
    if ok:
        first = layers[0]
        ok = all(hasattr(first, a) for a in ("attention", "intermediate", "output")) and all(
            hasattr(first.attention.self, p) for p in ("query", "key", "value", "attention_head_size")
        )
    if not ok:
        raise PassSkipped(
            f"{pass_name} knows the BERT encoder layout (attention.self.query/key/value, intermediate, output); "
            f"{type(model).__name__} is laid out differently"
        )
    return list(layers)


def _linear(old: Any, index: Any, dim: int) -> Any:
    """A copy of ``old`` keeping only ``index`` along ``dim`` (0: outputs, 1: inputs)."""
    import torch

    w = old.weight.index_select(dim, index).detach().clone()
    b = old.bias
    if b is not None and dim == 0:
        b = b[index]
    new = torch.nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b.detach().clone())
    return new


def prune_layer(layer: Any, heads: list[int], neurons: list[int]) -> None:
    """Keep ``heads`` (indices) of the layer's attention and ``neurons`` of its FFN."""
    import torch

    att = layer.attention.self
    d = att.attention_head_size
    idx = torch.tensor([h * d + j for h in sorted(heads) for j in range(d)], dtype=torch.long)
    att.query, att.key, att.value = (_linear(m, idx, 0) for m in (att.query, att.key, att.value))
    layer.attention.output.dense = _linear(layer.attention.output.dense, idx, 1)
    att.num_attention_heads = len(heads)
    att.all_head_size = len(heads) * d
    keep = torch.tensor(sorted(neurons), dtype=torch.long)
    layer.intermediate.dense = _linear(layer.intermediate.dense, keep, 0)
    layer.output.dense = _linear(layer.output.dense, keep, 1)


def structure_of(model: Any) -> dict[str, list[int]]:
    layers = encoder_layers(model, "prune")
    return {
        "heads": [int(layer.attention.self.num_attention_heads) for layer in layers],
        "intermediate": [int(layer.intermediate.dense.out_features) for layer in layers],
    }


def apply_structure(model: Any, structure: dict[str, list[int]]) -> None:
    """Give a freshly built model a pruned model's shapes (the weights are loaded afterwards)."""
    layers = encoder_layers(model, "prune")
    heads, inter = structure.get("heads", []), structure.get("intermediate", [])
    if len(heads) != len(layers) or len(inter) != len(layers):
        raise ConfigError(f"{PRUNED_KEY} in config.json describes {len(heads)} layers, the model has {len(layers)}")
    for layer, h, n in zip(layers, heads, inter, strict=True):
        prune_layer(layer, list(range(h)), list(range(n)))
