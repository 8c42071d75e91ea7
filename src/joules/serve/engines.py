"""Which engine runs a generative model: the one seam every mode (online, batch, stream, the CLI) builds
its generation engine through.

``open_generation_engine`` returns a ``joules.runtime.generation.Engine``:

- ``tensor_parallel`` not given (None) and a bundle with an ONNX decoder: ONNX Runtime in this process;
- ``tensor_parallel=N`` (N >= 1) or a weights-only bundle: the torch decoder split across N rank
  processes (``joules.parallel.TensorParallelDecoder``; N = 1 is the unsplit reference on the same
  path), each under ``max_worker_memory`` bytes, behind the same Engine, scheduler and APIs. The cap is
  checked from the weights' sizes before any rank starts: a model that does not fit raises ConfigError
  (exit code 2) naming the sizes and the ``--tensor-parallel N`` that would fit.

A tensor-parallel engine comes with a ``GroupSupervisor``: when a rank dies the engine turns unhealthy
(``Engine.healthy`` False, every request in flight and every new one refused with
``EngineUnavailableError``: 503), and the supervisor restarts the group after a back-off (docs/parallel.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
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

    # Ranks the decoder's weights are split across. None: not asked (ONNX Runtime in this process, or one
    # torch rank for a weights-only bundle); 1: the unsplit torch reference; N > 1: N ranks.
    tensor_parallel: int | None = None
    max_worker_memory: int | None = None  # bytes each rank may hold; None: no cap
    # Ranks on other machines (`joules worker`): rank 0 (this process's group) listens on master_addr:master_port
    # and only rank 0 starts here. None: every rank on this machine.
    master_addr: str | None = None
    master_port: int | None = None
    engine: str = "local"  # the serving engine (--engine); "ray" cannot place tensor-parallel ranks (refused)
    # A tensor-parallel group whose rank died is restarted after this many seconds (doubling while it keeps
    # dying, joules.parallel.supervisor); None: never, the engine stays down (503, not ready).
    restart_delay_s: float | None = 5.0

    def __post_init__(self) -> None:
        tp = self.tensor_parallel
        if tp is not None and (isinstance(tp, bool) or not isinstance(tp, int) or tp < 1):
            raise ConfigError(f"--tensor-parallel must be a whole number >= 1, got {tp!r}")
        if self.max_worker_memory is not None and self.max_worker_memory < 1:
            raise ConfigError(f"max_worker_memory must be a positive number of bytes, got {self.max_worker_memory!r}")
        d = self.restart_delay_s
        if d is not None and (isinstance(d, bool) or not isinstance(d, int | float) or d < 0):
            raise ConfigError(f"restart_delay_s must be a number of seconds >= 0 or None, got {d!r}")
        if (self.master_addr is not None or self.master_port is not None) and (tp is None or tp < 2):
            raise ConfigError(
                "--master-addr/--master-port place tensor-parallel ranks on other machines: give --tensor-parallel N "
                "(N >= 2) with them"
            )
        if (self.master_addr is None) != (self.master_port is None):
            raise ConfigError("give --master-addr and --master-port together (the address ranks join the group at)")
        port = self.master_port
        if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535):
            raise ConfigError(f"--master-port must be a port number 1..65535, got {port!r}")
        if self.engine == "ray" and tp is not None:
            raise ConfigError(
                f"--engine ray with --tensor-parallel {tp} is not supported: the Ray engine does not place "
                "tensor-parallel ranks; serve a split model with the local engine (--engine local), whose ranks "
                "may run on other machines with `joules worker` (docs/parallel.md)"
            )

    @property
    def split(self) -> bool:
        """Whether the torch rank path was asked for."""
        return self.tensor_parallel is not None


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
    if not parallel.split and not weights_only:
        if parallel.max_worker_memory is not None:
            raise ConfigError(
                "--max-worker-memory caps tensor-parallel workers: give --tensor-parallel N with it "
                "(N = 1 runs the model unsplit in one capped worker)"
            )
        return engine_from_bundle(bundle, config, options=options, settings=settings, name=name, version=version)
    return _tensor_parallel_engine(
        bundle, config, parallel=parallel, settings=settings, name=name or bundle.name, version=version
    )


def _tensor_parallel_engine(
    bundle: Bundle,
    config: EngineConfig | None,
    *,
    parallel: ParallelOptions,
    settings: Settings | None,
    name: str,
    version: int | None,
) -> Engine:
    from tokenizers import Tokenizer

    from joules.errors import BundleError
    from joules.meter import CostModel, EnergyMeter
    from joules.parallel import TensorParallelDecoder
    from joules.parallel.supervisor import GroupSupervisor, RestartPolicy
    from joules.runtime.generation import Engine, EngineConfig
    from joules.settings import load_settings

    spec = bundle.spec.generation
    if spec is None:
        raise BundleError(
            f"{bundle.name!r} is a {bundle.spec.task} model, not a text-generation one: --tensor-parallel splits "
            "causal language models"
        )
    if "weights" not in bundle.spec.files:
        raise ConfigError(
            f"model {bundle.name!r} has no safetensors weights in its bundle, only an ONNX graph (an optimized "
            "variant keeps only its graph): --tensor-parallel serves a version imported from a Hugging Face "
            "directory or a GGUF file (joules models list NAME shows which one it was made from)"
        )
    config = config or EngineConfig(max_model_len=min(EngineConfig().max_model_len, spec.context_length))
    settings = settings or load_settings()
    cap = parallel.max_worker_memory
    # Every KV slot is allocated up front (max_model_len tokens, 1/N on each rank): no more slots than the engine
    # uses and its KV budget (kv_cache_bytes) holds; under a cap, as many as fit it (the decoder sizes them, then
    # refuses a model whose weights alone do not fit).
    per_slot = 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * 4 * config.max_model_len  # float32
    slots = None if cap is not None else max(1, min(config.num_slots, config.kv_cache_bytes // per_slot))
    decoder = TensorParallelDecoder(
        bundle.path,
        tp=parallel.tensor_parallel or 1,
        num_slots=slots,
        max_model_len=config.max_model_len,
        max_worker_memory=cap,
        master_addr=parallel.master_addr,
        master_port=parallel.master_port,
    )
    try:
        template = (bundle.path / spec.chat_template).read_text(encoding="utf-8") if spec.chat_template else None
        engine = Engine(
            decoder,
            Tokenizer.from_file(str(bundle.tokenizer_path)),
            spec,
            fit_slots(config, decoder.num_slots),
            chat_template=template,
            meter=EnergyMeter.from_settings(settings),
            cost_model=CostModel.from_settings(settings),
            name=name,
            version=version,
        )
    except BaseException:
        decoder.close()
        raise
    if parallel.restart_delay_s is not None:
        GroupSupervisor(engine, RestartPolicy(delay_s=parallel.restart_delay_s)).start()
    return engine


def fit_slots(config: EngineConfig, num_slots: int) -> EngineConfig:
    """``config`` with no more running sequences and cached prefixes than the decoder has slots.

    Running sequences come first: a quarter of the slots at most hold cached prefixes.
    """
    if config.num_slots <= num_slots:
        return config
    prefix = min(config.prefix_cache_slots, num_slots // 4)
    return replace(config, max_num_seqs=num_slots - prefix, prefix_cache_slots=prefix)
