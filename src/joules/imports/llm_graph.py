"""Write a Llama-family decoder as the ONNX graph of bundle/generation.py, from its weights.

The graph is built node by node rather than traced: tracing a model with a
cache bakes in branches on the query length (prefill vs decode) and copies
the whole cache every step (past in, past + new out). Built by hand, each
layer is

    RMSNorm (fused with the residual add) -> one MatMul for q, k and v ->
    GroupQueryAttention (rotary inside; keys and values written in place into
    the caller's cache) -> MatMul o -> RMSNorm + residual -> one MatMul for gate
    and up -> SiLU(gate) * up -> MatMul down

which is the layer onnxruntime-genai's model builder writes for Llama
(``src/python/py/models/builder.py``) with ONNX Runtime's contrib operators
(``docs/ContribOperators.md``: GroupQueryAttention, SkipSimplifiedLayerNormalization,
QuickGelu with alpha 1, which is SiLU). Logits are computed only for the rows
``logits_index`` picks. Weights go to ``model.onnx.data`` (external data,
each tensor aligned to a page), MatMul weights transposed to [in, out] and
fused (q|k|v, gate|up); a tied output head reuses the embedding through
``Gemm(transB=1)``.

Numpy and onnx only: no torch. The import (causal_lm.py) gives the weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from joules.bundle.generation import (
    INPUT_IDS,
    LOGITS,
    LOGITS_INDEX,
    MS_DOMAIN,
    SEQLENS_K,
    TOTAL_SEQUENCE_LENGTH,
    past_names,
    present_names,
)
from joules.errors import BundleError

OPSET = 17
DATA_FILE = "model.onnx.data"
ALIGN = 4096  # ONNX Runtime can map page-aligned external tensors instead of copying them
SMALL = 1024  # tensors under this many bytes stay inside model.onnx


@dataclass(frozen=True, kw_only=True)
class LlamaShape:
    """What the graph needs to know about the transformer besides its weights."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    tie_word_embeddings: bool

    def __post_init__(self) -> None:
        if self.head_dim % 16:
            # ONNX Runtime's CPU GroupQueryAttention refuses other head sizes.
            raise BundleError(f"head_dim {self.head_dim} is not a multiple of 16; joules' decoder cannot run it")
        if self.num_heads % self.num_kv_heads:
            raise BundleError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")


class _ExternalData:
    """Appends tensors to one external data file and returns their TensorProtos."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = path.open("wb")
        self.offset = 0

    def tensor(self, name: str, array: np.ndarray) -> Any:
        from onnx import TensorProto, helper, numpy_helper

        array = np.ascontiguousarray(array)
        if array.nbytes < SMALL:  # shapes and split sizes: shape inference must read them inline
            return numpy_helper.from_array(array, name)
        pad = (-self.offset) % ALIGN
        if pad:
            self.file.write(b"\0" * pad)
            self.offset += pad
        data = array.tobytes()
        self.file.write(data)
        t = TensorProto()
        t.name = name
        t.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        t.dims.extend(array.shape)
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", self.path.name), ("offset", str(self.offset)), ("length", str(len(data)))):
            entry = t.external_data.add()
            entry.key, entry.value = k, v
        self.offset += len(data)
        return t

    def close(self) -> None:
        self.file.close()


def build_decoder(
    out_dir: Path,
    shape: LlamaShape,
    weight: Callable[[str], np.ndarray | None],
    cos_cache: np.ndarray,
    sin_cache: np.ndarray,
    *,
    model_file: str = "model.onnx",
) -> Path:
    """Write ``model_file`` and its external data into ``out_dir``.

    ``weight(name)`` returns the float32 array of a Hugging Face tensor name
    (``model.layers.0.self_attn.q_proj.weight``), or None when the model has
    no such tensor (biases of most Llamas). ``cos_cache``/``sin_cache`` are
    ``[positions, head_dim / 2]``: the rotary table, as the model computes it.
    """
    import onnx
    from onnx import TensorProto, helper

    def need(name: str) -> np.ndarray:
        w = weight(name)
        if w is None:
            raise BundleError(f"the model has no tensor {name!r}; joules imports Llama-family decoders only")
        return np.asarray(w, dtype=np.float32)

    data = _ExternalData(out_dir / DATA_FILE)
    inits: list[Any] = []
    nodes: list[Any] = []

    def init(name: str, array: np.ndarray) -> str:
        name = "w." + name  # initializers apart from node outputs
        inits.append(data.tensor(name, array))
        return name

    def node(op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs: Any) -> None:
        nodes.append(helper.make_node(op, inputs, outputs, name=f"{op}_{len(nodes)}", domain=domain, **attrs))

    h, nh, nkv, hd = shape.hidden_size, shape.num_heads, shape.num_kv_heads, shape.head_dim
    try:
        embed = init("embed_tokens", need("model.embed_tokens.weight"))
        cos = init("cos_cache", cos_cache.astype(np.float32))
        sin = init("sin_cache", sin_cache.astype(np.float32))
        node("Gather", [embed, INPUT_IDS], ["hidden.0"])
        residual, pending = "hidden.0", ""  # pending: the last layer's MLP output, not yet added
        for i in range(shape.num_layers):
            p = f"model.layers.{i}."
            ln1 = init(f"ln1.{i}", need(p + "input_layernorm.weight"))
            if pending:
                node(
                    "SkipSimplifiedLayerNormalization",
                    [residual, pending, ln1],
                    [f"norm1.{i}", "", "", f"resid1.{i}"],
                    domain=MS_DOMAIN,
                    epsilon=shape.rms_norm_eps,
                )
                residual = f"resid1.{i}"
            else:
                node(
                    "SimplifiedLayerNormalization",
                    [residual, ln1],
                    [f"norm1.{i}"],
                    epsilon=shape.rms_norm_eps,
                    axis=-1,
                    stash_type=1,
                )
            qkv_w = np.concatenate(
                [need(p + f"self_attn.{n}_proj.weight").T for n in ("q", "k", "v")], axis=1
            )  # [hidden, (nh + 2 nkv) hd]
            node("MatMul", [f"norm1.{i}", init(f"qkv.{i}", qkv_w)], [f"qkv.{i}"])
            biases = [weight(p + f"self_attn.{n}_proj.bias") for n in ("q", "k", "v")]
            qkv = f"qkv.{i}"
            if any(b is not None for b in biases):
                sizes = (nh * hd, nkv * hd, nkv * hd)
                full = [
                    np.zeros(n, np.float32) if b is None else np.asarray(b, np.float32)
                    for b, n in zip(biases, sizes, strict=True)
                ]
                node("Add", [qkv, init(f"qkv_bias.{i}", np.concatenate(full))], [f"qkv_b.{i}"])
                qkv = f"qkv_b.{i}"
            pk, pv = past_names(i)
            ok, ov = present_names(i)
            node(
                "GroupQueryAttention",
                [qkv, "", "", pk, pv, SEQLENS_K, TOTAL_SEQUENCE_LENGTH, cos, sin],
                [f"attn.{i}", ok, ov],
                domain=MS_DOMAIN,
                num_heads=nh,
                kv_num_heads=nkv,
                do_rotary=1,
                rotary_interleaved=0,
                scale=float(1.0 / np.sqrt(hd)),
            )
            node("MatMul", [f"attn.{i}", init(f"o.{i}", need(p + "self_attn.o_proj.weight").T)], [f"o.{i}"])
            attn_out = f"o.{i}"
            o_bias = weight(p + "self_attn.o_proj.bias")
            if o_bias is not None:
                node("Add", [attn_out, init(f"o_bias.{i}", np.asarray(o_bias, np.float32))], [f"o_b.{i}"])
                attn_out = f"o_b.{i}"
            ln2 = init(f"ln2.{i}", need(p + "post_attention_layernorm.weight"))
            node(
                "SkipSimplifiedLayerNormalization",
                [residual, attn_out, ln2],
                [f"norm2.{i}", "", "", f"resid2.{i}"],
                domain=MS_DOMAIN,
                epsilon=shape.rms_norm_eps,
            )
            residual = f"resid2.{i}"
            gate_up = np.concatenate([need(p + "mlp.gate_proj.weight").T, need(p + "mlp.up_proj.weight").T], axis=1)
            node("MatMul", [f"norm2.{i}", init(f"gate_up.{i}", gate_up)], [f"gate_up.{i}"])
            split = init(f"split.{i}", np.array([shape.intermediate_size] * 2, np.int64))
            node("Split", [f"gate_up.{i}", split], [f"gate.{i}", f"up.{i}"], axis=-1)
            node("QuickGelu", [f"gate.{i}"], [f"silu.{i}"], domain=MS_DOMAIN, alpha=1.0)  # x * sigmoid(x)
            node("Mul", [f"silu.{i}", f"up.{i}"], [f"act.{i}"])
            node("MatMul", [f"act.{i}", init(f"down.{i}", need(p + "mlp.down_proj.weight").T)], [f"mlp.{i}"])
            pending = f"mlp.{i}"
        final = init("final_norm", need("model.norm.weight"))
        node(
            "SkipSimplifiedLayerNormalization",
            [residual, pending, final],
            ["normed", "", "", "resid_final"],
            domain=MS_DOMAIN,
            epsilon=shape.rms_norm_eps,
        )
        flat = init("flat_shape", np.array([-1, h], np.int64))
        node("Reshape", ["normed", flat], ["normed_flat"])
        node("Gather", ["normed_flat", LOGITS_INDEX], ["picked"], axis=0)
        head = embed if shape.tie_word_embeddings else init("lm_head", need("lm_head.weight"))
        node("Gemm", ["picked", head], [LOGITS], transB=1)
    finally:
        data.close()

    kv_shape: list[str | int] = ["batch", nkv, "max_len", hd]
    inputs = [
        helper.make_tensor_value_info(INPUT_IDS, TensorProto.INT64, ["batch", "sequence"]),
        helper.make_tensor_value_info(SEQLENS_K, TensorProto.INT32, ["batch"]),
        helper.make_tensor_value_info(TOTAL_SEQUENCE_LENGTH, TensorProto.INT32, []),
        helper.make_tensor_value_info(LOGITS_INDEX, TensorProto.INT64, ["picked"]),
    ]
    outputs = [helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["picked", shape.vocab_size])]
    for i in range(shape.num_layers):
        inputs.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, kv_shape) for n in past_names(i))
        outputs.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, kv_shape) for n in present_names(i))
    graph = helper.make_graph(nodes, "joules_decoder", inputs, outputs, inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
        producer_name="joules",
    )
    path = out_dir / model_file
    onnx.save_model(model, str(path))
    return path


def shape_from_config(config: Mapping[str, Any]) -> LlamaShape:
    """The LlamaShape of a Hugging Face ``config.json`` (Llama, Mistral, Qwen2 and their kin)."""
    try:
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        return LlamaShape(
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(config["intermediate_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"config.json lacks what a Llama-family decoder needs: {e}") from e
