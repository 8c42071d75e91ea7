"""``joules import``: bring an outside model in as a bundle.

Sources: a bundle directory (has joules.yaml), an ONNX file with a spec file
(the joules.yaml fields that describe it), a Hugging Face-format
sequence-classification directory (config.json, model.safetensors,
tokenizer.json), which is exported to ONNX and checked against PyTorch, and a
causal language model, as a Hugging Face directory or a GGUF file, which
becomes a text-generation bundle (causal_lm.py). Every source is scanned for
pickles first; a pickle is refused and never opened.
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from joules.bundle.bundle import Bundle, sha256_file
from joules.bundle.graph import graph_inputs
from joules.bundle.inputs import TOKENIZED_KINDS
from joules.bundle.safety import check_safe, scan_directory
from joules.bundle.spec import DEFAULT_MAX_LENGTH, SPEC_FILE, BundleSpec
from joules.errors import BundleError
from joules.registry import ModelVersion, Registry, Stage, validate_name


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def prepare_import(
    source: Path,
    workdir: Path,
    *,
    spec_file: Path | None = None,
    rules: dict[str, Any] | None = None,
    max_length: int | None = None,
    weights_only: bool = False,
) -> Bundle:
    """Build a bundle for ``source`` inside ``workdir`` and return it (nothing is registered)."""
    if not source.exists():
        raise BundleError(f"nothing to import at {str(source)!r}: no such file or directory")
    if weights_only:
        from joules.imports.weights_only import import_weights_only

        if rules is not None or spec_file is not None:
            raise BundleError("--weights-only imports a causal LM as it is: --rules and --spec do not apply")
        return import_weights_only(source, workdir)
    if source.is_dir():
        scan_directory(source)  # before anything is read: a pickle is refused unopened
        if (source / SPEC_FILE).is_file():
            return _from_bundle(source, workdir)
        if (source / "config.json").is_file():
            from joules.imports.causal_lm import import_causal_lm_dir, is_causal_lm_dir

            if is_causal_lm_dir(source):
                _no_rules(source, rules)
                return import_causal_lm_dir(source, workdir)
            return _from_huggingface(source, workdir, rules=rules, max_length=max_length)
        raise BundleError(
            f"{str(source)!r} is neither a joules bundle (no {SPEC_FILE}) nor a Hugging Face model directory "
            "(no config.json); to import an ONNX file, pass the .onnx file and --spec"
        )
    check_safe(source)
    if source.suffix.lower() == ".gguf":
        from joules.imports.causal_lm import import_gguf

        _no_rules(source, rules)
        return import_gguf(source, workdir)
    if source.suffix.lower() != ".onnx":
        raise BundleError(
            f"cannot import {str(source)!r}: expected a directory, an .onnx file or a .gguf file (a causal LM)"
        )
    if spec_file is None:
        raise BundleError(
            f"importing the ONNX file {str(source)!r} needs --spec FILE: a YAML file with task, preprocess and "
            "postprocess (labels), as in joules.yaml (see docs/bundle.md)"
        )
    return _from_onnx(source, spec_file, workdir, rules=rules)


def _no_rules(source: Path, rules: dict[str, Any] | None) -> None:
    if rules is not None:
        raise BundleError(f"{str(source)!r} is a text-generation model: decision rules apply to classifiers only")


def _lineage_entry(source: Path, kind: str, **extra: Any) -> dict[str, Any]:
    return {"step": "import", "kind": kind, "source": str(source.resolve()), "created_at": _now(), **extra}


def _from_bundle(source: Path, workdir: Path) -> Bundle:
    out = workdir / "bundle"
    shutil.copytree(source, out, symlinks=False)
    bundle = Bundle.load(out)
    bundle = bundle.with_spec(lineage=(*bundle.spec.lineage, _lineage_entry(source, "bundle")))
    bundle.save()
    return bundle


def _from_onnx(source: Path, spec_file: Path, workdir: Path, *, rules: dict[str, Any] | None) -> Bundle:
    check_safe(spec_file)
    try:
        data = yaml.safe_load(spec_file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise BundleError(f"cannot read spec file {str(spec_file)!r}: {e}") from e
    if not isinstance(data, dict):
        raise BundleError(f"spec file {str(spec_file)!r} must hold a mapping like joules.yaml")
    out = workdir / "bundle"
    out.mkdir()
    shutil.copyfile(source, out / "model.onnx")
    data.setdefault("name", "imported")
    data["model"] = "model.onnx"
    data.setdefault("inputs", [])
    if not data["inputs"]:
        data["inputs"] = [
            {"name": s.name, "dtype": s.dtype, "shape": list(s.shape)} for s in graph_inputs(out / "model.onnx")
        ]
    pre = data.get("preprocess") or {}
    if pre.get("kind", "text") in TOKENIZED_KINDS:
        tok = Path(pre.get("tokenizer", "tokenizer.json"))
        tok = tok if tok.is_absolute() else spec_file.parent / tok
        if not tok.is_file():
            raise BundleError(f"the text model's tokenizer {str(tok)!r} named in {str(spec_file)!r} does not exist")
        check_safe(tok)
        shutil.copyfile(tok, out / "tokenizer.json")
        data["preprocess"] = {**pre, "tokenizer": "tokenizer.json"}
    if rules is not None:
        data["rules"] = rules
    data["lineage"] = [
        *(data.get("lineage") or []),
        _lineage_entry(source, "onnx", sha256=sha256_file(source), spec=str(spec_file)),
    ]
    BundleSpec.from_dict(data, str(spec_file)).write(out)
    return Bundle.load(out)


def _from_huggingface(source: Path, workdir: Path, *, rules: dict[str, Any] | None, max_length: int | None) -> Bundle:
    if not (source / "tokenizer.json").is_file():
        raise BundleError(f"{str(source)!r}: a Hugging Face text model needs tokenizer.json (the fast tokenizer file)")
    from joules.train import load_sequence_classifier, write_text_bundle

    model = load_sequence_classifier(source)
    id2label = getattr(model.config, "id2label", None) or {}
    labels = [str(id2label.get(i, f"LABEL_{i}")) for i in range(model.config.num_labels)]
    # The bundle default (128) unless asked, never past the model's position table.
    limit = min(max_length or DEFAULT_MAX_LENGTH, int(getattr(model.config, "max_position_embeddings", 512)))
    bundle, gap = write_text_bundle(
        workdir / "bundle",
        model,
        source / "tokenizer.json",
        name="imported",
        labels=labels,
        max_length=limit,
        rules=rules,
        lineage=[_lineage_entry(source, "huggingface", architecture=type(model).__name__)],
    )
    lineage = list(bundle.spec.lineage)
    lineage[-1]["onnx_parity_max_abs"] = gap
    bundle = bundle.with_spec(lineage=tuple(lineage))
    bundle.save()
    return bundle


def import_model(
    source: str | Path,
    name: str,
    registry: Registry,
    *,
    spec_file: str | Path | None = None,
    rules: dict[str, Any] | None = None,
    promote: bool = False,
    max_length: int | None = None,
    weights_only: bool = False,
) -> ModelVersion:
    """Import ``source`` and register it as the next version of ``name``; returns the ModelVersion."""
    validate_name(name)
    with tempfile.TemporaryDirectory(prefix="joules-import-") as tmp:
        bundle = prepare_import(
            Path(source),
            Path(tmp),
            spec_file=Path(spec_file) if spec_file else None,
            rules=rules,
            max_length=max_length,
            weights_only=weights_only,
        )
        return registry.register(bundle.path, name, stage=Stage.PRODUCTION if promote else Stage.NONE)
