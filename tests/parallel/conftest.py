"""Fixtures: tiny random Llama checkpoints (session-wide; read-only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.parallel.llama import make_tiny_llama


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 query / 3 KV heads, untied LM head, vocabulary 101."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_llama_tied(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 query / 4 KV heads, tied embeddings, Llama 3.1 RoPE scaling: 3 ranks get 2 + 1 + 1 KV groups."""
    return make_tiny_llama(
        tmp_path_factory.mktemp("tiny-llama-tied"),
        seed=1,
        hidden_size=64,
        num_attention_heads=8,
        num_key_value_heads=4,
        tie_word_embeddings=True,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    )
