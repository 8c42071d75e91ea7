"""Optimization passes: each a small frozen dataclass, called as ``pass(bundle, out, ctx)``."""

from joules.optimize.passes.base import Pass, PassContext, PassResult
from joules.optimize.passes.distill import DistillTransformer
from joules.optimize.passes.fuse import Fuse
from joules.optimize.passes.ngram import DistillNgram
from joules.optimize.passes.precision import Bf16, Fp16
from joules.optimize.passes.prune import Prune
from joules.optimize.passes.quantize import DynamicInt8, StaticInt8

__all__ = [
    "Bf16",
    "DistillNgram",
    "DistillTransformer",
    "DynamicInt8",
    "Fp16",
    "Fuse",
    "Pass",
    "PassContext",
    "PassResult",
    "Prune",
    "StaticInt8",
]
