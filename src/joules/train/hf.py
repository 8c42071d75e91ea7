"""Hugging Face sequence classifiers, loaded from safetensors only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from joules.bundle import scan_directory
from joules.errors import BundleError, require


def quiet_transformers() -> None:
    """transformers prints load reports and progress bars; joules prints its own."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def load_sequence_classifier(directory: Path, **kwargs: Any) -> Any:
    """``AutoModelForSequenceClassification`` from ``directory`` (config.json + model.safetensors).

    The directory is scanned for pickles first; ``use_safetensors=True`` makes
    transformers refuse to fall back to ``pytorch_model.bin``.
    """
    require("torch", "train")
    require("transformers", "train")
    scan_directory(directory)
    for needed in ("config.json", "model.safetensors"):
        if not (directory / needed).is_file():
            raise BundleError(
                f"{str(directory)!r} is not a Hugging Face model directory joules can load: {needed} is missing "
                "(joules needs config.json and model.safetensors; pickled weights are refused)"
            )
    quiet_transformers()
    from transformers import AutoModelForSequenceClassification

    kwargs.setdefault("attn_implementation", "eager")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(directory), use_safetensors=True, trust_remote_code=False, local_files_only=True, **kwargs
        )
    except (OSError, ValueError, KeyError) as e:
        raise BundleError(f"cannot load a sequence classifier from {str(directory)!r}: {e}") from e
    return model.eval()
