from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from joules.bundle import Bundle
from joules.runtime.executor import RuntimeOptions
from joules.runtime.generation import Engine, EngineConfig, engine_from_bundle
from joules.settings import Settings


@pytest.fixture()
def make_engine(tiny_llm_bundle: Path, tmp_path: Path) -> Iterator[Callable[..., Engine]]:
    """Engines on the tiny Llama bundle, closed after the test: ``make_engine(max_num_seqs=4, ...)``."""
    engines: list[Engine] = []
    bundle = Bundle.load(tiny_llm_bundle)

    def make(**config: Any) -> Engine:
        config.setdefault("max_model_len", 256)
        engine = engine_from_bundle(
            bundle,
            EngineConfig(**config),
            options=RuntimeOptions(intra_op_threads=1),
            settings=Settings(home=tmp_path / "home", watts_per_core=3.0, static_watts=10.0, vcpus=2),
        )
        engines.append(engine)
        return engine

    yield make
    for e in engines:
        e.close()


@pytest.fixture()
def engine(make_engine: Callable[..., Engine]) -> Engine:
    return make_engine()
