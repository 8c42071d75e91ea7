"""``joules import DIR --weights-only``: a causal LM registered as its weights, with no export and no parity run.

For a model too large to export to ONNX or to hold whole in one process: the
Hugging Face directory (config.json, safetensors, tokenizer.json, optionally a
chat template and generation_config.json) is checked from its headers alone
(architecture, every tensor's name, shape and dtype; the weights are never
loaded) and copied, hard-linked where it can be, into a text-generation
bundle whose ``generation.weights_only`` is true. Only the tensor-parallel
decoder serves it (``joules.parallel``; ``--tensor-parallel 1`` is the
unsplit reference on the same torch path), and its parity with transformers
is what that decoder's tests check.
"""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from joules.bundle import Activation, Bundle, BundleSpec, Postprocess, Preprocess, Task, scan_directory
from joules.bundle.generation import GenerationSpec
from joules.errors import BundleError
from joules.imports.hf_files import TEMPLATE_FILE, chat_template, read_json, special_tokens
from joules.parallel.llama import LlamaShape
from joules.parallel.weights import INDEX_FILE, WeightIndex

OPTIONAL_FILES = ("generation_config.json", "tokenizer_config.json", "special_tokens_map.json")


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link when on the same file system (a 3 GB model is not copied twice), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _weights_role(source: Path, index: WeightIndex) -> str:
    if (source / INDEX_FILE).is_file():
        return INDEX_FILE
    files = index.files()
    if len(files) != 1:
        raise BundleError(
            f"{str(source)!r} has {len(files)} safetensors files but no {INDEX_FILE} saying which tensor is where"
        )
    return files[0].name


def import_weights_only(source: Path, workdir: Path) -> Bundle:
    """Build the weights-only text-generation bundle for ``source`` inside ``workdir`` (headers read, never weights)."""
    if not source.is_dir():
        raise BundleError(
            f"--weights-only imports a Hugging Face directory (config.json, *.safetensors, tokenizer.json); "
            f"{str(source)!r} is not a directory"
        )
    scan_directory(source)
    if not (source / "config.json").is_file():
        raise BundleError(f"{str(source)!r} has no config.json: --weights-only imports a Hugging Face causal LM")
    if not (source / "tokenizer.json").is_file():
        raise BundleError(f"{str(source)!r}: a text-generation model needs tokenizer.json (the fast tokenizer file)")
    config = read_json(source / "config.json")
    shape = LlamaShape.from_config(config, str(source / "config.json"))
    index = WeightIndex.from_directory(source)
    index.check(shape)
    from tokenizers import Tokenizer

    eos, bos, pad = special_tokens(source, config, Tokenizer.from_file(str(source / "tokenizer.json")))
    template = chat_template(source)
    weights = _weights_role(source, index)

    out = workdir / "bundle"
    out.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", *OPTIONAL_FILES):
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
    if (source / INDEX_FILE).is_file():
        shutil.copyfile(source / INDEX_FILE, out / INDEX_FILE)
    for f in index.files():
        _link_or_copy(f, out / f.name)
    if template is not None:
        (out / TEMPLATE_FILE).write_text(template, encoding="utf-8")
    gen_config = read_json(source / "generation_config.json")
    defaults: dict[str, Any] = {
        k: gen_config[k] for k in ("temperature", "top_p", "top_k", "repetition_penalty") if k in gen_config
    }
    generation = GenerationSpec(
        architecture=str((config.get("architectures") or ["LlamaForCausalLM"])[0]),
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        num_layers=shape.num_layers,
        num_heads=shape.num_heads,
        num_kv_heads=shape.num_kv_heads,
        head_dim=shape.head_dim,
        context_length=shape.max_position_embeddings,
        eos_token_ids=tuple(eos),
        bos_token_id=bos,
        pad_token_id=pad,
        chat_template=TEMPLATE_FILE if template is not None else None,
        defaults=defaults or None,
        weights_only=True,
    )
    lineage = {
        "step": "import",
        "kind": "huggingface-weights-only",
        "source": str(source.resolve()),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "weights_fingerprint": index.fingerprint,
        "weight_bytes": sum(e.nbytes for e in index.tensors.values()),
        "parity": "not run: served by the tensor-parallel decoder, whose tests compare it with transformers",
    }
    spec = BundleSpec(
        name="imported",
        task=Task.TEXT_GENERATION,
        model=weights,
        inputs=(),
        preprocess=Preprocess(kind="text", tokenizer="tokenizer.json"),
        # A generator's output is text: postprocess names the logits; its one label is unused.
        postprocess=Postprocess(output="logits", labels=("text",), activation=Activation.NONE),
        generation=generation,
        files={"weights_config": "config.json", "weights": weights},
        lineage=(lineage,),
    )
    spec.write(out)
    return Bundle.load(out)
