"""Import a causal language model (a Hugging Face directory or a GGUF file) as a text-generation bundle.

The bundle holds:

- ``model.onnx`` + ``model.onnx.data``: the decoder graph of bundle/generation.py,
  written from the weights by llm_graph.py (what serving runs);
- ``tokenizer.json`` and ``chat_template.jinja`` (the template is data, rendered
  in a sandbox);
- ``config.json`` + ``model.safetensors``: the weights under their Hugging Face
  names (``model.layers.0.self_attn.q_proj.weight``), for the tensor-parallel
  engine, which slices them, and for fine-tuning;
- ``joules.yaml`` with the ``generation`` section and, in the lineage, the
  parity of the ONNX graph with PyTorch: logits within 1e-3 for whole prompts,
  prompt chunks, single-token decodes and a batch of sequences with different
  past lengths, and a greedy continuation identical for 32 tokens.

A GGUF file is read by ``transformers`` (with the ``gguf`` package), its
quantized weights dequantized to float32, and goes through the same path.
PyTorch and transformers are needed here only: serving the bundle needs
neither.
"""

from __future__ import annotations

import json
import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from joules.bundle import Activation, Bundle, BundleSpec, Postprocess, Preprocess, Task, TensorSpec, scan_directory
from joules.bundle.bundle import sha256_file
from joules.bundle.generation import GenerationSpec
from joules.errors import BundleError, require
from joules.imports.hf_files import TEMPLATE_FILE, chat_template, read_json, special_tokens

log = logging.getLogger(__name__)

SUPPORTED_TYPES = ("llama", "mistral", "qwen2", "smollm3")
PARITY_TOLERANCE = 1e-3
GREEDY_TOKENS = 32
PARITY_TEXTS = (
    "The capital of France is",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "def fibonacci(n):\n    ",
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def is_causal_lm_dir(directory: Path) -> bool:
    """A Hugging Face directory whose config.json names a ...ForCausalLM architecture."""
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    archs = config.get("architectures") or []
    return any(str(a).endswith("ForCausalLM") for a in archs) or (
        not archs and config.get("model_type") in SUPPORTED_TYPES
    )


def _sampling_defaults(source: Path) -> dict[str, Any] | None:
    gen = read_json(source / "generation_config.json")
    keep: dict[str, Any] = {k: gen[k] for k in ("temperature", "top_p", "top_k", "repetition_penalty") if k in gen}
    if gen.get("do_sample") is False:
        keep["temperature"] = 0.0
    return keep or None


def load_causal_lm(directory: Path) -> Any:
    """``AutoModelForCausalLM`` in float32 from safetensors (pickles refused), eager attention."""
    require("torch", "train")
    require("transformers", "train")
    from joules.train import quiet_transformers

    quiet_transformers()
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(directory),
            use_safetensors=True,
            trust_remote_code=False,
            local_files_only=True,
            dtype=torch.float32,
            attn_implementation="eager",
        )
    except (OSError, ValueError, KeyError) as e:
        raise BundleError(f"cannot load a causal language model from {str(directory)!r}: {e}") from e
    return model.eval()


def _rotary_tables(model: Any, positions: int, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The model's own cos/sin for positions 0..positions-1 (its rope scaling included), [positions, head_dim/2]."""
    import torch

    rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
    if rotary is None:
        raise BundleError(f"{type(model).__name__} has no model.rotary_emb; joules imports rotary Llama-family models")
    with torch.no_grad():
        pos = torch.arange(positions, dtype=torch.long)[None, :]
        dummy = torch.zeros(1, 1, head_dim, dtype=torch.float32)
        cos, sin = rotary(dummy, pos)
    half = head_dim // 2
    cos_np = cos[0].numpy()
    sin_np = sin[0].numpy()
    # rotate_half layout: the table repeats its first half; GroupQueryAttention takes that half.
    if not np.array_equal(cos_np[:, :half], cos_np[:, half:]):
        raise BundleError("the model's rotary table is not in the rotate-half layout joules' decoder runs")
    return np.ascontiguousarray(cos_np[:, :half]), np.ascontiguousarray(sin_np[:, :half])


def _copy_weights(source: Path, out: Path) -> dict[str, str]:
    """The Hugging Face weights and config, as they are, beside the graph."""
    shutil.copyfile(source / "config.json", out / "config.json")
    index = source / "model.safetensors.index.json"
    if index.is_file():
        shutil.copyfile(index, out / index.name)
        shards = sorted(set(read_json(index).get("weight_map", {}).values()))
        for shard in shards:
            shutil.copyfile(source / shard, out / shard)
        return {"weights_config": "config.json", "weights": index.name}
    if not (source / "model.safetensors").is_file():
        raise BundleError(
            f"{str(source)!r} has no model.safetensors (nor an index of shards); joules reads safetensors only"
        )
    shutil.copyfile(source / "model.safetensors", out / "model.safetensors")
    return {"weights_config": "config.json", "weights": "model.safetensors"}


def write_generation_bundle(source: Path, out: Path, *, lineage: list[dict[str, Any]]) -> Bundle:
    """Build the text-generation bundle for the Hugging Face directory ``source`` into ``out``."""
    import torch

    from joules.imports.llm_graph import build_decoder, shape_from_config
    from joules.runtime.generation.chat import render_chat

    scan_directory(source)
    config = read_json(source / "config.json")
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_TYPES:
        raise BundleError(
            f"{str(source)!r}: model_type {model_type!r} is not a decoder joules can run "
            f"(supported: {', '.join(SUPPORTED_TYPES)})"
        )
    if not (source / "tokenizer.json").is_file():
        raise BundleError(f"{str(source)!r}: a text-generation model needs tokenizer.json (the fast tokenizer file)")
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    eos, bos, pad = special_tokens(source, config, tokenizer)
    template = chat_template(source)
    if template is not None:
        name = lambda i: (tokenizer.id_to_token(i) or "") if i is not None else ""  # noqa: E731
        render_chat(template, [{"role": "user", "content": "hi"}], bos_token=name(bos), eos_token=name(eos[0]))

    torch.set_num_threads(min(torch.get_num_threads(), 2))
    model = load_causal_lm(source)
    shape = shape_from_config(model.config.to_dict())
    context = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
    state = {k: v.detach().to(torch.float32).numpy() for k, v in model.state_dict().items()}
    cos, sin = _rotary_tables(model, context, shape.head_dim)

    out.mkdir(parents=True, exist_ok=True)
    log.info("writing the ONNX decoder (%d layers)", shape.num_layers)
    build_decoder(out, shape, state.get, cos, sin)
    del state
    shutil.copyfile(source / "tokenizer.json", out / "tokenizer.json")
    if template is not None:
        (out / TEMPLATE_FILE).write_text(template, encoding="utf-8")
    files = _copy_weights(source, out)
    generation = GenerationSpec(
        architecture=str((config.get("architectures") or [type(model).__name__])[0]),
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        num_layers=shape.num_layers,
        num_heads=shape.num_heads,
        num_kv_heads=shape.num_kv_heads,
        head_dim=shape.head_dim,
        context_length=context,
        eos_token_ids=tuple(eos),
        bos_token_id=bos,
        pad_token_id=pad,
        chat_template=TEMPLATE_FILE if template is not None else None,
        defaults=_sampling_defaults(source),
    )
    log.info("checking the ONNX decoder against PyTorch")
    parity = check_parity(model, out / "model.onnx", generation, tokenizer)
    entry: dict[str, Any] = dict(lineage[-1]) if lineage else {"step": "import", "created_at": _now()}
    entry["parity"] = parity
    spec = BundleSpec(
        name="imported",
        task=Task.TEXT_GENERATION,
        inputs=(
            TensorSpec(name="input_ids", dtype="int64", shape=("batch", "sequence")),
            TensorSpec(name="seqlens_k", dtype="int32", shape=("batch",)),
            TensorSpec(name="total_sequence_length", dtype="int32", shape=()),
            TensorSpec(name="logits_index", dtype="int64", shape=("picked",)),
        ),
        preprocess=Preprocess(kind="text", tokenizer="tokenizer.json"),
        # A generator's output is text: postprocess names the logits output; its one label is unused.
        postprocess=Postprocess(output="logits", labels=("text",), activation=Activation.NONE),
        generation=generation,
        lineage=(*lineage[:-1], entry),
        files=files,
    )
    spec.write(out)
    return Bundle.load(out)


# -- parity -----------------------------------------------------------------------------------------


def check_parity(model: Any, onnx_path: Path, spec: GenerationSpec, tokenizer: Any) -> dict[str, Any]:
    """Compare the ONNX decoder with PyTorch; BundleError past the tolerance. Returns the figures."""
    import torch

    from joules.runtime.executor import RuntimeOptions
    from joules.runtime.generation.decoder import StepSequence
    from joules.runtime.generation.onnx_decoder import OnnxDecoder, decoder_config

    prompts = [tokenizer.encode(t, add_special_tokens=False).ids for t in PARITY_TEXTS]
    prompts = [[i for i in p if i < spec.vocab_size] or [0] for p in prompts]
    longest = max(len(p) for p in prompts) + GREEDY_TOKENS + 8
    config = decoder_config(spec, min(spec.context_length, max(64, longest)))
    decoder = OnnxDecoder(onnx_path, config, num_slots=len(prompts) + 1, options=RuntimeOptions(intra_op_threads=2))
    gaps: dict[str, float] = {}

    def torch_logits(ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            return model(torch.tensor([ids], dtype=torch.long)).logits[0].numpy()

    def gap(name: str, got: np.ndarray, want: np.ndarray) -> None:
        gaps[name] = max(gaps.get(name, 0.0), float(np.max(np.abs(got - want))))

    try:
        # Whole prompts (prefill shapes), one per slot.
        for slot, ids in enumerate(prompts):
            got = decoder.step([StepSequence(slot=slot, start=0, tokens=np.array(ids), all_logits=True)])[0]
            gap("prefill", got, torch_logits(ids))
        # A batch of single-token decodes over sequences with different past lengths.
        seqs = [list(p) for p in prompts]
        last = [torch_logits(s)[-1] for s in seqs]
        for _ in range(4):
            nxt = [int(np.argmax(x)) for x in last]
            steps = [
                StepSequence(slot=b, start=len(s), tokens=np.array([t]))
                for b, (s, t) in enumerate(zip(seqs, nxt, strict=True))
            ]
            got_rows = decoder.step(steps)
            for b, (s, t, got) in enumerate(zip(seqs, nxt, got_rows, strict=True)):
                s.append(t)
                last[b] = torch_logits(s)[-1]
                gap("batched_decode", got, last[b])
        # A prompt in two chunks (chunked prefill) in the spare slot.
        ids = prompts[1]
        cut = len(ids) // 2
        spare = len(prompts)
        decoder.step([StepSequence(slot=spare, start=0, tokens=np.array(ids[:cut]))])
        got = decoder.step([StepSequence(slot=spare, start=cut, tokens=np.array(ids[cut:]), all_logits=True)])[0]
        gap("chunked_prefill", got, torch_logits(ids)[cut:])
        # Greedy continuation, token by token. The reference runs exactly GREEDY_TOKENS tokens, so it never
        # picks an end-of-sequence token (``min_new_tokens``); the ONNX side leaves them out the same way.
        eos = _eos_ids(model)
        ids = prompts[0]
        onnx_tokens: list[int] = []
        logits = decoder.step([StepSequence(slot=0, start=0, tokens=np.array(ids))])[0]
        for _ in range(GREEDY_TOKENS):
            t = int(np.argmax(_without(logits, eos)))
            onnx_tokens.append(t)
            logits = decoder.step([StepSequence(slot=0, start=len(ids) + len(onnx_tokens) - 1, tokens=np.array([t]))])[
                0
            ]
        torch_tokens = _torch_greedy(model, ids, GREEDY_TOKENS)
        agree = next(
            (i for i, (a, b) in enumerate(zip(onnx_tokens, torch_tokens, strict=True)) if a != b), GREEDY_TOKENS
        )
        # Where the two part, PyTorch's own logits over the common prefix say whether its top two tokens tie
        # within the logit tolerance: then either choice is right and the thread count picked one (a sum's
        # order differs), not a difference of the graph.
        tie_margin = None
        if agree < GREEDY_TOKENS:
            ref = _without(torch_logits(ids + onnx_tokens[:agree])[-1], eos)
            tie_margin = float(ref[torch_tokens[agree]] - ref[onnx_tokens[agree]])
    finally:
        decoder.close()
    worst = max(gaps.values())
    result = {
        "max_abs_logit_gap": worst,
        "gaps": gaps,
        "tolerance": PARITY_TOLERANCE,
        "greedy_tokens": GREEDY_TOKENS,
        "greedy_identical": agree == GREEDY_TOKENS,
        "greedy_agree_tokens": agree,
        "greedy_tie_margin": tie_margin,
        "reference": "transformers (PyTorch, float32, eager attention)",
    }
    if not np.isfinite(worst) or worst > PARITY_TOLERANCE:
        raise BundleError(
            f"the ONNX decoder differs from PyTorch by {worst:.2e} in logits (> {PARITY_TOLERANCE:g}; {gaps}); "
            "this model's architecture is not one joules' graph reproduces"
        )
    if tie_margin is not None and abs(tie_margin) > PARITY_TOLERANCE:
        raise BundleError(
            f"the ONNX decoder's greedy continuation leaves PyTorch's at token {agree} of {GREEDY_TOKENS} (ONNX "
            f"{onnx_tokens[agree]}, PyTorch {torch_tokens[agree]}), where PyTorch prefers its token by "
            f"{tie_margin:.2e} in logits (more than a tie within {PARITY_TOLERANCE:g})"
        )
    return result


def _eos_ids(model: Any) -> list[int]:
    """The end-of-sequence ids transformers' ``min_new_tokens`` holds back (the model's generation config)."""
    e = getattr(model.generation_config, "eos_token_id", None)
    if e is None:
        e = model.config.eos_token_id
    return [] if e is None else [int(e)] if isinstance(e, int) else [int(x) for x in e]


def _without(logits: np.ndarray, ids: list[int]) -> np.ndarray:
    """``logits`` with ``ids`` made impossible, as transformers' MinNewTokensLengthLogitsProcessor does."""
    if not ids:
        return logits
    out = np.array(logits, copy=True)
    out[[i for i in ids if i < out.shape[-1]]] = -np.inf
    return out


def _torch_greedy(model: Any, ids: list[int], n: int) -> list[int]:
    """transformers' own greedy decoding (its KV cache), exactly ``n`` tokens: a generation config of its own,
    so nothing of the model's (a repetition penalty, n-gram rules) changes the reference."""
    import torch
    from transformers import GenerationConfig

    eos = _eos_ids(model)
    config = GenerationConfig(
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        eos_token_id=eos or None,
        pad_token_id=eos[0] if eos else 0,
    )
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids], dtype=torch.long),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            generation_config=config,
        )
    return [int(t) for t in out[0, len(ids) :]]


# -- GGUF -------------------------------------------------------------------------------------------


def gguf_to_hf_dir(gguf: Path, out: Path) -> Path:
    """Dequantize a GGUF file into a Hugging Face directory (float32 safetensors, tokenizer, template)."""
    require("torch", "train")
    require("transformers", "train")
    require("gguf", "train")
    from joules.train import quiet_transformers

    quiet_transformers()
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(min(torch.get_num_threads(), 2))
    log.info("reading %s (GGUF weights are dequantized to float32)", gguf.name)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise BundleError(f"transformers cannot read the GGUF file {str(gguf)!r}: {e}") from e
    out.mkdir(parents=True, exist_ok=True)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)  # the weights written are float32, not GGUF blocks
    config["dtype"] = "float32"
    config["architectures"] = config.get("architectures") or [type(model).__name__]
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    tokenizer.save_pretrained(str(out))
    for pickled in out.glob("*.bin"):
        pickled.unlink()
    return out


def import_gguf(gguf: Path, workdir: Path) -> Bundle:
    hf = gguf_to_hf_dir(gguf, workdir / "hf")
    entry = {
        "step": "import",
        "kind": "gguf",
        "source": str(gguf.resolve()),
        "sha256": sha256_file(gguf),
        "created_at": _now(),
        "dequantized_to": "float32",
    }
    bundle = write_generation_bundle(hf, workdir / "bundle", lineage=[entry])
    shutil.rmtree(hf, ignore_errors=True)
    return bundle


def import_causal_lm_dir(source: Path, workdir: Path) -> Bundle:
    entry = {"step": "import", "kind": "huggingface", "source": str(source.resolve()), "created_at": _now()}
    return write_generation_bundle(source, workdir / "bundle", lineage=[entry])
