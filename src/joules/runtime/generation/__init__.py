"""Generation: a causal language model's decode loop, without torch.

``decoder.py`` is the plug-in point between the engine (scheduler, KV slots,
sampling) and whatever runs the model: ONNX Runtime in this process
(``onnx_decoder.py``), or tensor-parallel rank processes over
torch.distributed (``joules.parallel``). ``engine.py`` runs continuous
batching over a Decoder; ``loader.py`` builds one from the registry.
"""

from joules.runtime.generation.chat import render_chat
from joules.runtime.generation.decoder import Decoder, DecoderConfig, StepSequence
from joules.runtime.generation.engine import Engine, EngineObserver, EngineStats, GenerationStream
from joules.runtime.generation.loader import bundle_engine, engine_from_bundle, load_engine
from joules.runtime.generation.onnx_decoder import OnnxDecoder
from joules.runtime.generation.prompt import encoded_request
from joules.runtime.generation.request import (
    ABORT,
    ERROR,
    LENGTH,
    STOP,
    GenerationDelta,
    GenerationRequest,
    GenerationResult,
    Usage,
)
from joules.runtime.generation.sampling import SamplingParams, TokenLogprob
from joules.runtime.generation.scheduler import EngineConfig

__all__ = [
    "ABORT",
    "ERROR",
    "LENGTH",
    "STOP",
    "Decoder",
    "DecoderConfig",
    "Engine",
    "EngineConfig",
    "EngineObserver",
    "EngineStats",
    "GenerationDelta",
    "GenerationRequest",
    "GenerationResult",
    "GenerationStream",
    "OnnxDecoder",
    "SamplingParams",
    "StepSequence",
    "TokenLogprob",
    "Usage",
    "bundle_engine",
    "encoded_request",
    "engine_from_bundle",
    "load_engine",
    "render_chat",
]
