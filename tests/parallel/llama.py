"""Tiny random Llama checkpoints built in the test (no download), and transformers as the reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def make_tiny_llama(out: Path, *, seed: int = 0, **overrides: Any) -> Path:
    """A random-weight LlamaForCausalLM saved as config.json + model.safetensors (fp32)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg: dict[str, Any] = {
        "vocab_size": 101,  # odd: unequal vocabulary shares, a padded gather
        "hidden_size": 96,
        "intermediate_size": 100,  # not divisible by 3: unequal MLP shares
        "num_hidden_layers": 2,
        "num_attention_heads": 6,
        "num_key_value_heads": 3,  # SmolLM2's grouping: 2 ranks get 2 + 1 KV groups
        "max_position_embeddings": 256,
        "tie_word_embeddings": False,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    cfg.update(overrides)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).to(torch.float32).eval()
    # Random init leaves the norms at 1: perturb them so that a norm read wrongly shows in the logits.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(str(out))
    return out


def reference_logits(model_dir: Path, tokens: np.ndarray) -> np.ndarray:
    """transformers' logits for every position of one sequence, fp32: [n, vocab]."""
    import torch
    from transformers import LlamaForCausalLM

    model = _load(model_dir)
    assert isinstance(model, LlamaForCausalLM)
    with torch.no_grad():
        out = model(torch.as_tensor(tokens, dtype=torch.int64)[None]).logits[0]
    return out.numpy()


_MODELS: dict[Path, Any] = {}


def _load(model_dir: Path) -> Any:
    import torch
    from transformers import LlamaForCausalLM

    if model_dir not in _MODELS:
        torch.set_num_threads(1)
        _MODELS[model_dir] = LlamaForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    return _MODELS[model_dir]
