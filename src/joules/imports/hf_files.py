"""What a Hugging Face model directory says about itself, read the same way by every importer of causal
language models (``causal_lm.py``: exported to ONNX; ``weights_only.py``: served by the tensor-parallel ranks):
JSON files, special token ids, the chat template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from joules.errors import BundleError

# The bundle file a chat template is written to (and read from, when a source directory has one).
TEMPLATE_FILE = "chat_template.jinja"


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise BundleError(f"{str(path)!r} is not valid JSON: {e}") from e
    return data if isinstance(data, dict) else {}


def chat_template(source: Path) -> str | None:
    jinja = source / TEMPLATE_FILE
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = read_json(source / "tokenizer_config.json").get("chat_template")
    if isinstance(template, list):  # named templates: take the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) else None


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def special_tokens(source: Path, config: dict[str, Any], tokenizer: Any) -> tuple[list[int], int | None, int | None]:
    """(eos ids, bos id, pad id) from generation_config.json, config.json and the tokenizer's config."""
    gen = read_json(source / "generation_config.json")
    tok_config = read_json(source / "tokenizer_config.json")

    def token_id(entry: Any) -> int | None:
        text = entry.get("content") if isinstance(entry, dict) else entry
        return tokenizer.token_to_id(text) if isinstance(text, str) else None

    eos = _ids(gen.get("eos_token_id")) or _ids(config.get("eos_token_id"))
    tok_eos = token_id(tok_config.get("eos_token"))
    if tok_eos is not None and tok_eos not in eos:
        eos.append(tok_eos)
    bos = next(iter(_ids(gen.get("bos_token_id")) or _ids(config.get("bos_token_id"))), None)
    if bos is None:
        bos = token_id(tok_config.get("bos_token"))
    pad = next(iter(_ids(gen.get("pad_token_id")) or _ids(config.get("pad_token_id"))), None)
    if not eos:
        raise BundleError(
            f"{str(source)!r}: no end-of-sequence token id in generation_config.json, config.json or "
            "tokenizer_config.json; the engine would never know when the model is done"
        )
    return eos, bos, pad
