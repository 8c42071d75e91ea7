"""Which engine runs a generative model: the one seam every mode (online, batch, stream, the CLI) builds
its generation engine through.

``open_generation_engine`` returns a ``joules.runtime.generation.Engine``. With ``tensor_parallel=1`` and a
bundle that has an ONNX decoder, the decoder runs with ONNX Runtime in this process. With
``tensor_parallel=N > 1`` (or a weights-only bundle) the decoder is split across N rank processes
(``joules.parallel``), each under ``max_worker_memory`` bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from joules.errors import ConfigError

if TYPE_CHECKING:
    from joules.bundle import Bundle
    from joules.runtime.generation import Engine, EngineConfig
    from joules.runtime.options import RuntimeOptions
    from joules.settings import Settings


@dataclass(frozen=True, kw_only=True)
class ParallelOptions:
    """How a generative model is split across processes."""

    tensor_parallel: int = 1  # ranks the decoder's weights are split across; 1: one process, no split
    max_worker_memory: int | None = None  # bytes each rank may hold; None: no cap

    def __post_init__(self) -> None:
        if not isinstance(self.tensor_parallel, int) or self.tensor_parallel < 1:
            raise ConfigError(f"tensor_parallel must be a whole number >= 1, got {self.tensor_parallel!r}")
        if self.max_worker_memory is not None and self.max_worker_memory < 1:
            raise ConfigError(f"max_worker_memory must be a positive number of bytes, got {self.max_worker_memory!r}")


def open_generation_engine(
    bundle: Bundle,
    config: EngineConfig | None = None,
    *,
    parallel: ParallelOptions | None = None,
    options: RuntimeOptions | None = None,
    settings: Settings | None = None,
    name: str | None = None,
    version: int | None = None,
) -> Engine:
    """The engine that serves ``bundle`` (a text-generation bundle) as ``parallel`` says."""
    from joules.runtime.generation import engine_from_bundle

    parallel = parallel or ParallelOptions()
    spec = bundle.spec.generation
    weights_only = spec is not None and spec.weights_only
    if parallel.tensor_parallel == 1 and not weights_only:
        return engine_from_bundle(bundle, config, options=options, settings=settings, name=name, version=version)
    # The tensor-parallel engine (joules.parallel.TensorParallelDecoder under the same Engine) is wired here.
    raise ConfigError(
        f"model {bundle.name!r}: serving with --tensor-parallel {parallel.tensor_parallel}"
        f"{' (a weights-only bundle)' if weights_only else ''} is not wired into this command yet"
    )
