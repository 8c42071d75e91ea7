"""Optimization: passes (fuse, quantize, prune, distill) -> variants -> interleaved
measurement -> selection under an accuracy budget -> registration -> report."""

from joules.errors import OptimizeError, PassSkipped
from joules.optimize.presets import ALL_PASSES, PRESETS, Measure, Preset
from joules.optimize.run import OptimizeConfig, RunState, optimize
from joules.optimize.select import Objective, Score, Selection, select

__all__ = [
    "ALL_PASSES",
    "PRESETS",
    "Measure",
    "Objective",
    "OptimizeConfig",
    "OptimizeError",
    "PassSkipped",
    "Preset",
    "RunState",
    "Score",
    "Selection",
    "optimize",
    "select",
]
