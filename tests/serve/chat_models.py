"""JOULES_HOMEs holding a tiny random Llama as ``chat`` (production), for the generation tests of every mode."""

from __future__ import annotations

import shutil
from pathlib import Path

from joules.registry import Registry
from joules.settings import Settings


def register_chat(home: Path, bundle: Path, name: str = "chat") -> None:
    """Register the text-generation bundle directory ``bundle`` in ``home`` as ``name``, in production."""
    Registry(Settings(home=home)).register(bundle, name, stage="production")


def chat_home(root: Path, bundle: Path, *, spam_home: Path | None = None) -> Path:
    """A fresh home under ``root`` with ``chat`` (and spam:1 when ``spam_home`` is given)."""
    home = root / "home"
    if spam_home is not None:
        shutil.copytree(spam_home, home)
    else:
        home.mkdir(parents=True)
    register_chat(home, bundle)
    return home


def slow_llm_bundle(root: Path) -> Path:
    """A wider, deeper random Llama (milliseconds a token, not one): a stream stays observable while it runs."""
    from joules.imports.causal_lm import import_causal_lm_dir
    from tests.llm import make_tiny_llama_dir

    src = make_tiny_llama_dir(root / "slow-llm", seed=1, layers=4, hidden=512, heads=8, kv_heads=4)
    return import_causal_lm_dir(src, root / "slow-llm-import").path
