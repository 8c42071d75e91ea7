"""The ``generation`` section of a text-generation bundle, and its decoder graph's interface.

A text-generation bundle's ``model.onnx`` is a decoder-only transformer that
runs one step over a batch of sequences whose keys and values live in a KV
cache the caller owns: per layer, ``past_key.{i}`` and ``past_value.{i}`` of
shape ``[batch, kv_heads, max_len, head_dim]`` are read and written in place
(ONNX Runtime's GroupQueryAttention with a shared past/present buffer, as
onnxruntime-genai runs it). Row ``b`` of a call is slot ``b`` of the buffer
it is given; ``seqlens_k[b]`` is that row's length after the step minus one.
``logits_index`` picks which of the ``batch x sequence`` new tokens get logits
(the last of each prompt chunk, usually), so a 2,000-token prompt does not pay
for 2,000 x vocabulary logits.

The section records what the serving engine needs to run the graph and to
turn text into tokens and back: the transformer's shape, the context length,
the end-of-sequence ids and the chat template (a Jinja file rendered in a
sandbox: data, never code).

A *weights-only* bundle (``joules import DIR --weights-only``, for a model too
large to export or to hold whole) has no ONNX graph: ``model`` names its
safetensors weights, ``files`` holds ``weights_config`` (config.json) and
``weights``, and only the tensor-parallel decoder (``joules.parallel``, N >= 1
torch ranks that each read their slices) can serve it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from joules.errors import BundleError

# The decoder graph's inputs and outputs besides the per-layer cache (GRAPH_VERSION 1).
GRAPH_VERSION = 1
INPUT_IDS = "input_ids"  # int64 [batch, sequence]
SEQLENS_K = "seqlens_k"  # int32 [batch]: each row's total length after this step, minus one
TOTAL_SEQUENCE_LENGTH = "total_sequence_length"  # int32 scalar: the longest row's total length
LOGITS_INDEX = "logits_index"  # int64 [n]: rows of the flattened [batch * sequence] tokens to score
LOGITS = "logits"  # float32 [n, vocab]
DECODER_INPUTS = (INPUT_IDS, SEQLENS_K, TOTAL_SEQUENCE_LENGTH, LOGITS_INDEX)
MS_DOMAIN = "com.microsoft"  # ONNX Runtime's contrib operators (GroupQueryAttention, MatMulNBits, ...)


def is_tied_head(node: Any) -> bool:
    """The output head as decoder graphs write it: ``Gemm(x, embedding, transB=1)``, no bias, no scaling."""
    if node.op_type != "Gemm" or len(node.input) != 2:
        return False
    ints = {a.name: a.i for a in node.attribute if a.type == a.INT}
    floats = {a.name: a.f for a in node.attribute if a.type == a.FLOAT}
    return ints.get("transB") == 1 and not ints.get("transA") and floats.get("alpha", 1.0) == 1.0


def past_names(layer: int) -> tuple[str, str]:
    """The cache inputs of ``layer``: (keys, values)."""
    return f"past_key.{layer}", f"past_value.{layer}"


def present_names(layer: int) -> tuple[str, str]:
    """The cache outputs of ``layer``, bound to the same memory as its inputs."""
    return f"present_key.{layer}", f"present_value.{layer}"


def decoder_graph_io(num_layers: int) -> tuple[list[str], list[str]]:
    """Every input and output name of a decoder graph with ``num_layers`` layers."""
    inputs = list(DECODER_INPUTS)
    outputs = [LOGITS]
    for i in range(num_layers):
        inputs.extend(past_names(i))
        outputs.extend(present_names(i))
    return inputs, outputs


def _whole(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise BundleError(f"generation.{name} must be a whole number >= {low}, got {value!r}")
    return value


@dataclass(frozen=True, kw_only=True)
class GenerationSpec:
    """How to run a text-generation bundle's decoder and talk to it in text."""

    architecture: str  # e.g. LlamaForCausalLM: where the weights came from
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    context_length: int  # the longest sequence (prompt + completion) the model was built for
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    chat_template: str | None = None  # a Jinja file in the bundle; None: prompts are plain text only
    graph_version: int = GRAPH_VERSION
    # Sampling defaults the model's authors chose (generation_config.json); requests override them.
    defaults: dict[str, Any] | None = None
    # No ONNX graph: served only by the tensor-parallel decoder from the safetensors weights.
    weights_only: bool = False

    def __post_init__(self) -> None:
        for name, low in (
            ("vocab_size", 2),
            ("hidden_size", 1),
            ("num_layers", 1),
            ("num_heads", 1),
            ("num_kv_heads", 1),
            ("head_dim", 1),
            ("context_length", 2),
        ):
            _whole(name, getattr(self, name), low)
        if self.num_heads % self.num_kv_heads:
            raise BundleError(
                f"generation.num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        object.__setattr__(self, "eos_token_ids", tuple(self.eos_token_ids))
        if not self.eos_token_ids:
            raise BundleError("generation.eos_token_ids must name at least one end-of-sequence token id")
        for t in self.eos_token_ids:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.vocab_size:
                raise BundleError(f"generation.eos_token_ids: {t!r} is not a token id in [0, {self.vocab_size})")
        for name in ("bos_token_id", "pad_token_id"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < self.vocab_size):
                raise BundleError(f"generation.{name}: {v!r} is not a token id in [0, {self.vocab_size})")
        if self.graph_version != GRAPH_VERSION:
            raise BundleError(
                f"generation.graph_version {self.graph_version!r} is not supported (this joules runs "
                f"{GRAPH_VERSION}); re-import the model with this joules"
            )
        if not isinstance(self.weights_only, bool):
            raise BundleError(f"generation.weights_only must be true or false, got {self.weights_only!r}")
        if self.defaults is not None and not isinstance(self.defaults, dict):
            raise BundleError(f"generation.defaults must be a mapping, got {type(self.defaults).__name__}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["eos_token_ids"] = list(self.eos_token_ids)
        return d

    @classmethod
    def from_dict(cls, data: Any) -> GenerationSpec:
        if not isinstance(data, dict):
            raise BundleError(f"generation must be a mapping, got {type(data).__name__}")
        try:
            return cls(**data)
        except TypeError as e:
            raise BundleError(f"generation: {e}") from e
