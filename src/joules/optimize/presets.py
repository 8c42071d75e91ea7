"""Named presets: how hard each pass tries and how carefully variants are measured.

One table, like optimum's optimization levels (O1-O4): a preset fixes every
setting of every pass, and the run records the preset and the settings it
resolved to in the report and in the lineage of the model it registers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from joules.errors import ConfigError

ALL_PASSES = ("fuse", "int8-dynamic", "int8-static", "bf16", "fp16", "prune", "distill")


@dataclass(frozen=True, kw_only=True)
class Measure:
    """How variants are measured (interleaved, see evaluate.py)."""

    rounds: int = 3  # throughput and latency rounds over every variant, in rotated order
    batch_size: int = 32  # throughput batch (the Predictor sorts rows by length)
    latency_rows: int = 64  # batch-1 calls per variant per round
    bootstrap: int = 1000  # resamples for the 95 % intervals
    memory_rows: int = 64  # rows the memory probe predicts (the longest of the test split)
    # A variant whose probabilities move more than this when the batch around a row changes
    # is "batch-dependent" (dynamic quantization computes activation scales per batch).
    batch_tolerance: float = 1e-3

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.batch_size < 1 or self.latency_rows < 1:
            raise ConfigError("rounds, batch_size and latency_rows must be >= 1")
        if self.bootstrap < 0 or self.memory_rows < 0:
            raise ConfigError("bootstrap and memory_rows must be >= 0 (0 turns them off)")


@dataclass(frozen=True, kw_only=True)
class Preset:
    description: str
    calibration_methods: tuple[str, ...] = ("minmax", "percentile", "entropy")
    calibration_rows: int = 64
    per_channel: bool = True
    prune_sparsities: tuple[float, ...] = (0.3, 0.5)
    prune_epochs: int = 1
    student_layers: tuple[int, ...] = (3,)
    student_epochs: int = 3
    # Calibration of the students' int8-static variant (deterministic int8, unlike int8-dynamic).
    student_calibration: str = "minmax"
    ngram_epochs: int = 10
    ngram_n: int = 2
    # Fallback: keep this share of the quantized operators (most sensitive first) in fp32, in turn.
    fallback_shares: tuple[float, ...] = (0.1, 0.25)
    max_train_rows: int | None = None  # None: the whole training split
    min_train_seconds: float = 20.0  # a training pass with less time than this left is skipped
    measure: Measure = Measure()

    def __post_init__(self) -> None:
        if any(not 0 < s < 1 for s in self.prune_sparsities):
            raise ConfigError(f"prune sparsities must be in (0, 1), got {list(self.prune_sparsities)}")
        if any(not 0 < s < 1 for s in self.fallback_shares):
            raise ConfigError(f"fallback shares must be in (0, 1), got {list(self.fallback_shares)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, Preset] = {
    "standard": Preset(
        description="every pass at the settings benchmarked in docs/benchmarks.md; fits 30 minutes on 2 cores",
    ),
    "quick": Preset(
        description="one setting per pass and fewer measurement rounds: a first look in a few minutes",
        calibration_methods=("minmax",),
        prune_sparsities=(0.5,),
        student_epochs=2,
        ngram_epochs=5,
        fallback_shares=(0.25,),
        measure=Measure(rounds=2, latency_rows=32),
    ),
    "smoke": Preset(
        description="tiny samples and one round: checks the whole pipeline end to end, numbers mean little",
        calibration_methods=("minmax",),
        calibration_rows=16,
        prune_sparsities=(0.5,),
        student_layers=(1,),
        student_epochs=1,
        ngram_epochs=2,
        fallback_shares=(0.25,),
        max_train_rows=200,
        min_train_seconds=1.0,
        measure=Measure(rounds=1, latency_rows=4, bootstrap=50, memory_rows=8),
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; presets are {sorted(PRESETS)}") from None
