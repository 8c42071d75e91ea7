"""Generation: a causal language model's decode loop, without torch.

``decoder.py`` is the plug-in point between the engine (scheduler, KV slots,
sampling) and whatever runs the model: ONNX Runtime in this process, or
tensor-parallel rank processes over torch.distributed (``joules.parallel``).
"""

from joules.runtime.generation.decoder import Decoder, DecoderConfig, StepSequence

__all__ = ["Decoder", "DecoderConfig", "StepSequence"]
