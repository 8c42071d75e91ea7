"""``fuse``: ONNX Runtime graph optimizations plus the transformer fusions.

ONNX Runtime's basic optimizations (constant folding, redundant node removal)
run first, then its transformer optimizer replaces subgraphs with fused
operators (EmbedLayerNormalization, Attention, SkipLayerNormalization,
BiasGelu). Which fused operators appeared is reported, not assumed: the
dynamo exporter's graphs, for one, only get part of the fusions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from joules.bundle import Bundle
from joules.errors import ConfigError, OptimizeError
from joules.optimize.passes import graph
from joules.optimize.passes.base import PassContext, PassResult, derive_bundle
from joules.optimize.passes.quiet import quiet_onnxruntime_tools

# The parity bound of fused vs original raw outputs (e.g. logits): fusion only reorders float32
# arithmetic, which moves outputs far less than this, while a wrong fusion moves them far more.
# A platform default, not any one model's target: Fuse(tolerance=...) overrides it.
FUSE_TOLERANCE = 1e-3


@dataclass(frozen=True, kw_only=True)
class Fuse:
    name: ClassVar[str] = "fuse"
    tolerance: float = FUSE_TOLERANCE
    # 1: ONNX Runtime's basic level, whose result runs on any execution provider; higher
    # levels bake in provider-specific kernels (the session applies them at load anyway).
    opt_level: int = 1
    parity_rows: int = 64

    def __post_init__(self) -> None:
        if not self.tolerance > 0:
            raise ConfigError(f"fuse tolerance must be > 0, got {self.tolerance}")
        if self.opt_level not in (0, 1):
            raise ConfigError(f"fuse opt_level must be 0 or 1 (provider-independent), got {self.opt_level}")

    def __call__(self, bundle: Bundle, out: Path, ctx: PassContext) -> PassResult:
        from onnxruntime.transformers.optimizer import optimize_model

        started = time.perf_counter()
        model = graph.load(bundle.model_path)
        nodes_before = len(model.graph.node)
        rewritten = graph.explicit_head_counts(model)
        with quiet_onnxruntime_tools():
            optimized = optimize_model(
                model, model_type="bert", num_heads=0, hidden_size=0, opt_level=self.opt_level, use_gpu=False
            )
            fused = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
            new = derive_bundle(bundle, out, lambda p: optimized.save_model_to_file(str(p)))
        after = graph.load(new.model_path)
        texts = ctx.texts("validation") if ctx.dataset is not None else None
        feeds = graph.sample_feeds(bundle, texts, rows=self.parity_rows, seed=ctx.seed)
        output = bundle.spec.postprocess.output
        gap = float(
            np.max(
                np.abs(
                    graph.run_output(bundle.model_path, feeds, output) - graph.run_output(new.model_path, feeds, output)
                )
            )
        )
        if gap > self.tolerance:
            raise OptimizeError(
                f"fusion changed the model's outputs by up to {gap:.2e} (more than the tolerance {self.tolerance:g}); "
                "the fused graph was discarded"
            )
        details = {
            "fused_ops": fused,
            "nodes_before": nodes_before,
            "nodes_after": len(after.graph.node),
            "ops_after": graph.op_counts(after),
            "explicit_head_reshapes": rewritten,
            "parity_max_abs": gap,
            "parity_rows": sum(len(next(iter(f.values()))) for f in feeds),
        }
        return PassResult(new, details, time.perf_counter() - started)
