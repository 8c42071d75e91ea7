"""A Llama-architecture model's shape, from its Hugging Face ``config.json`` (no torch).

The tensor names are Hugging Face's (``model.layers.{i}.self_attn.q_proj.weight``
...). RoPE settings are read from ``rope_parameters`` (transformers >= 5) or
``rope_theta`` + ``rope_scaling`` (older files); the scaling types joules
computes itself are ``default``, ``linear`` and ``llama3`` (Llama 3.1's
frequency bands), the rest are refused rather than run wrongly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from joules.errors import BundleError

ARCHITECTURES = ("LlamaForCausalLM",)
ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True, kw_only=True)
class LlamaShape:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope: dict[str, Any] = field(default_factory=dict)  # rope_type and its parameters
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048
    dtype: str = "float32"  # of the checkpoint, as config.json states it

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise BundleError(f"config.json: {name} must be a whole number >= 1, got {v!r}")
        if self.num_heads % self.num_kv_heads:
            raise BundleError(
                f"config.json: num_attention_heads ({self.num_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_kv_heads})"
            )
        rope_type = self.rope.get("rope_type", "default")
        if rope_type not in ROPE_TYPES:
            raise BundleError(
                f"config.json: rope type {rope_type!r} is not supported by the tensor-parallel decoder "
                f"(it computes {list(ROPE_TYPES)})"
            )

    @property
    def group_size(self) -> int:
        """Query heads per KV head."""
        return self.num_heads // self.num_kv_heads

    def required_tensors(self) -> list[str]:
        """The Hugging Face tensor names a checkpoint of this shape must hold (``lm_head`` may be tied)."""
        names = ["model.embed_tokens.weight", "model.norm.weight"]
        for i in range(self.num_layers):
            names += [f"model.layers.{i}.self_attn.{p}_proj.weight" for p in "qkvo"]
            names += [f"model.layers.{i}.mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
            names += [f"model.layers.{i}.{p}_layernorm.weight" for p in ("input", "post_attention")]
        return names

    @classmethod
    def from_config(cls, config: dict[str, Any], source: str = "config.json") -> LlamaShape:
        archs = config.get("architectures") or []
        if config.get("model_type") != "llama" or (archs and not any(a in ARCHITECTURES for a in archs)):
            raise BundleError(
                f"{source}: model_type {config.get('model_type')!r} / architectures {archs} is not a Llama causal "
                f"LM; the tensor-parallel decoder runs {list(ARCHITECTURES)}"
            )
        for flag in ("attention_bias", "mlp_bias"):
            if config.get(flag):
                raise BundleError(f"{source}: {flag}: true is not supported by the tensor-parallel decoder")
        if config.get("hidden_act", "silu") != "silu":
            raise BundleError(f"{source}: hidden_act {config.get('hidden_act')!r} is not silu")
        rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
        if "type" in rope and "rope_type" not in rope:
            rope["rope_type"] = rope.pop("type")  # the pre-4.45 spelling
        theta = rope.pop("rope_theta", config.get("rope_theta", 10000.0))
        heads = int(config["num_attention_heads"])
        try:
            return cls(
                vocab_size=int(config["vocab_size"]),
                hidden_size=int(config["hidden_size"]),
                intermediate_size=int(config["intermediate_size"]),
                num_layers=int(config["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=int(config.get("num_key_value_heads") or heads),
                head_dim=int(config.get("head_dim") or int(config["hidden_size"]) // heads),
                rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
                rope_theta=float(theta),
                rope=rope,
                tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
                max_position_embeddings=int(config.get("max_position_embeddings", 2048)),
                dtype=str(config.get("dtype") or config.get("torch_dtype") or "float32"),
            )
        except KeyError as e:
            raise BundleError(f"{source}: missing {e.args[0]!r}") from e

    @classmethod
    def read(cls, directory: Path) -> LlamaShape:
        path = directory / "config.json"
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise BundleError(f"cannot read {str(path)!r}: {e.strerror}") from e
        except ValueError as e:
            raise BundleError(f"{str(path)!r} is not JSON: {e}") from e
        if not isinstance(config, dict):
            raise BundleError(f"{str(path)!r} must hold a JSON object")
        return cls.from_config(config, str(path))
