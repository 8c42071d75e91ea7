"""From the passes asked for to the variants to build: single passes and their compositions.

A recipe is a chain of passes. Recipes share prefixes (every quantized
variant starts with ``fuse``; the distilled student is fused and quantized in
turn), and the run builds each distinct prefix once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from joules.errors import ConfigError
from joules.optimize.passes.distill import DistillTransformer
from joules.optimize.passes.fuse import Fuse
from joules.optimize.passes.ngram import DistillNgram
from joules.optimize.passes.precision import Bf16, Fp16
from joules.optimize.passes.prune import Prune
from joules.optimize.passes.quantize import DynamicInt8, StaticInt8
from joules.optimize.presets import ALL_PASSES, Preset

TRAINING_PASSES = (Prune, DistillTransformer, DistillNgram)


@dataclass(frozen=True)
class Recipe:
    name: str
    steps: tuple[Any, ...]
    # The last step quantizes: if the variant misses the budget, retry with its most
    # sensitive operators kept in fp32.
    fallback: bool = False

    @property
    def passes(self) -> list[str]:
        return [s.name for s in self.steps]


def parse_passes(value: str | Iterable[str]) -> tuple[str, ...]:
    items = [p.strip() for p in (value.split(",") if isinstance(value, str) else value) if p.strip()]
    unknown = sorted(set(items) - set(ALL_PASSES))
    if unknown or not items:
        raise ConfigError(f"unknown passes {unknown or items}; passes are {','.join(ALL_PASSES)}")
    return tuple(dict.fromkeys(items))


def _name(*parts: str) -> str:
    return "+".join(p for p in parts if p)


def build_plan(passes: Iterable[str], preset: Preset) -> list[Recipe]:
    """Recipes for ``passes``, cheap graph passes first, training passes last."""
    chosen = set(parse_passes(passes))
    fuse: tuple[Any, ...] = (Fuse(),) if "fuse" in chosen else ()
    fused = "fuse" if fuse else ""
    int8 = DynamicInt8(per_channel=preset.per_channel)
    want_dynamic = "int8-dynamic" in chosen
    plan: list[Recipe] = []
    if fuse:
        plan.append(Recipe("fuse", fuse))
    if want_dynamic:
        plan.append(Recipe(_name(fused, "int8-dynamic"), (*fuse, int8), fallback=True))
    if "int8-static" in chosen:
        for method in preset.calibration_methods:
            step = StaticInt8(method=method, per_channel=preset.per_channel, calibration_rows=preset.calibration_rows)
            # Static QDQ quantization runs on the unfused graph: the QDQ quantizer knows MatMul, not
            # the fused Attention operator; ONNX Runtime fuses the QDQ pairs when the session loads.
            plan.append(Recipe(f"int8-static-{method}", (step,), fallback=True))
    halves: tuple[tuple[str, Any], ...] = (("bf16", Bf16()), ("fp16", Fp16()))
    for half, precision in halves:
        if half in chosen:
            plan.append(Recipe(_name(fused, half), (*fuse, precision)))
    if "distill" in chosen:
        ngram = DistillNgram(n=preset.ngram_n, epochs=preset.ngram_epochs)
        plan.append(Recipe("distill-ngram", (ngram,)))
        if want_dynamic:
            # Only the embedding table: weight-only, so outputs stay independent of the batch.
            table = DynamicInt8(per_channel=False, op_types=("Gather",))
            plan.append(Recipe("distill-ngram+int8-dynamic", (ngram, table)))
        for layers in preset.student_layers:
            student = DistillTransformer(layers=layers, epochs=preset.student_epochs)
            base = f"distill-{layers}layer"
            plan.append(Recipe(_name(base, fused), (student, *fuse)))
            if want_dynamic:
                plan.append(Recipe(_name(base, fused, "int8-dynamic"), (student, *fuse, int8), fallback=True))
            if "int8-static" in chosen:
                static = StaticInt8(
                    method=preset.student_calibration,
                    per_channel=preset.per_channel,
                    calibration_rows=preset.calibration_rows,
                )
                plan.append(Recipe(_name(base, f"int8-static-{static.method}"), (student, static), fallback=True))
    if "prune" in chosen:
        for sparsity in preset.prune_sparsities:
            prune = Prune(sparsity=sparsity, epochs=preset.prune_epochs)
            base = f"prune{round(sparsity * 100)}"
            plan.append(Recipe(_name(base, fused), (prune, *fuse)))
            if want_dynamic:
                plan.append(Recipe(_name(base, fused, "int8-dynamic"), (prune, *fuse, int8), fallback=True))
    return plan
