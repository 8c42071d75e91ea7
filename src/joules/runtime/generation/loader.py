"""Build a generation ``Engine`` from a registry reference or a bundle directory."""

from __future__ import annotations

from pathlib import Path

from joules.bundle import Bundle
from joules.errors import BundleError
from joules.meter import CostModel, EnergyMeter
from joules.registry import Registry
from joules.runtime.executor import RuntimeOptions
from joules.runtime.generation.engine import Engine
from joules.runtime.generation.onnx_decoder import OnnxDecoder, decoder_config
from joules.runtime.generation.scheduler import EngineConfig
from joules.settings import Settings, load_settings

# A step is hundreds of small operators run back to back: pool threads that spin briefly for the next
# one instead of sleeping save a wake-up each (the online server's --spin-us, same bound).
DEFAULT_OPTIONS = RuntimeOptions(allow_spinning=True, spin_duration_us=100)


def engine_from_bundle(
    bundle: Bundle,
    config: EngineConfig | None = None,
    *,
    options: RuntimeOptions | None = None,
    settings: Settings | None = None,
    name: str | None = None,
    version: int | None = None,
) -> Engine:
    """An engine running ``bundle``'s decoder with ONNX Runtime in this process."""
    from tokenizers import Tokenizer

    spec = bundle.spec.generation
    if spec is None:
        raise BundleError(
            f"{bundle.name!r} is a {bundle.spec.task} model, not a text-generation one; "
            "`joules generate` and `joules chat` need a causal language model (joules import FILE.gguf)"
        )
    if spec.weights_only:
        raise BundleError(
            f"{bundle.name!r} is a weights-only bundle (safetensors, no ONNX graph): ONNX Runtime cannot run it; "
            "serve it with --tensor-parallel N (N >= 1, the torch rank path; see docs/parallel.md)"
        )
    config = config or EngineConfig(max_model_len=min(EngineConfig().max_model_len, spec.context_length))
    settings = settings or load_settings()
    options = options or DEFAULT_OPTIONS
    decoder = OnnxDecoder(
        bundle.model_path,
        decoder_config(spec, config.max_model_len),
        config.num_slots,
        options,
        batch_invariant=config.batch_invariant,
    )
    template = (bundle.path / spec.chat_template).read_text(encoding="utf-8") if spec.chat_template else None
    return Engine(
        decoder,
        Tokenizer.from_file(str(bundle.tokenizer_path)),
        spec,
        config,
        chat_template=template,
        meter=EnergyMeter.from_settings(settings),
        cost_model=CostModel.from_settings(settings),
        name=name or bundle.name,
        version=version,
    )


def load_engine(
    ref: str,
    config: EngineConfig | None = None,
    *,
    registry: Registry | None = None,
    options: RuntimeOptions | None = None,
    settings: Settings | None = None,
) -> Engine:
    """The engine for ``NAME`` (its production version) or ``NAME:VERSION`` from the registry."""
    settings = settings or (registry.settings if registry else load_settings())
    registry = registry or Registry(settings)
    mv = registry.get(ref)
    bundle = registry.load(f"{mv.name}:{mv.version}")
    return engine_from_bundle(bundle, config, options=options, settings=settings, name=mv.name, version=mv.version)


def bundle_engine(path: str | Path, config: EngineConfig | None = None, **kwargs: object) -> Engine:
    """An engine for a bundle directory outside the registry (tests, benchmarks)."""
    return engine_from_bundle(Bundle.load(Path(path)), config, **kwargs)  # type: ignore[arg-type]
