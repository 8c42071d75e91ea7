"""``optimize``: passes -> variants -> interleaved measurement -> selection -> registration -> report."""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from joules.bundle import Bundle, Split, SplitDataset
from joules.errors import ConfigError, JoulesError, OptimizeError, PassFailed, PassSkipped
from joules.meter import EnergyMeter
from joules.optimize.build import Builder, Built
from joules.optimize.evaluate import Candidate, OnnxEngine, TorchEngine, measure_memory, measure_quality, measure_speed
from joules.optimize.passes import graph
from joules.optimize.passes.base import PassContext
from joules.optimize.passes.quantize import quantizable_nodes
from joules.optimize.passes.sensitivity import rank_sensitive_nodes
from joules.optimize.plan import Recipe, build_plan, parse_passes
from joules.optimize.presets import ALL_PASSES, Measure, Preset, get_preset
from joules.optimize.select import Objective, Selection, parse_objective, select
from joules.registry import Registry, Stage

log = logging.getLogger("joules.optimize")


@dataclass(frozen=True, kw_only=True)
class OptimizeConfig:
    max_f1_drop: float = 1.0  # F1 points: 1.0 = 0.01
    objective: Objective = Objective.THROUGHPUT
    passes: tuple[str, ...] = ALL_PASSES
    preset: str = "standard"
    budget_minutes: float = 30.0
    promote: bool = False
    allow_batch_dependent: bool = False
    torch_reference: bool = True  # also time the original in PyTorch eager, as it is usually run
    dataset: Path | None = None  # a dataset.jsonl for bundles that carry none
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "objective", parse_objective(self.objective))
        object.__setattr__(self, "passes", parse_passes(self.passes))
        get_preset(self.preset)
        if not math.isfinite(self.max_f1_drop) or self.max_f1_drop < 0:
            raise ConfigError(f"--max-f1-drop must be a number of F1 points >= 0, got {self.max_f1_drop}")
        if not self.budget_minutes > 0:
            raise ConfigError(f"--budget-minutes must be > 0, got {self.budget_minutes}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_f1_drop": self.max_f1_drop,
            "objective": str(self.objective),
            "passes": list(self.passes),
            "preset": self.preset,
            "budget_minutes": self.budget_minutes,
            "promote": self.promote,
            "allow_batch_dependent": self.allow_batch_dependent,
            "seed": self.seed,
        }


@dataclass
class RunState:
    """Everything the report needs, gathered as the run goes."""

    ref: str
    config: OptimizeConfig
    preset: Preset
    meter: EnergyMeter
    report_dir: Path
    started: float = field(default_factory=time.perf_counter)
    original: Candidate | None = None
    variants: list[Candidate] = field(default_factory=list)
    references: list[Candidate] = field(default_factory=list)
    # Recipes that did not build: skipped = does not apply here (PassSkipped, with the reason);
    # failed = a pass raised something else (a bug or a broken input), with the error.
    skipped: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    selection: Selection | None = None
    measure: Measure | None = None  # as measured: the preset's, with fewer rounds if time ran short
    chosen: dict[str, Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def root(self) -> Bundle:
        assert self.original is not None and self.original.bundle is not None
        return self.original.bundle


def _dataset(bundle: Bundle, config: OptimizeConfig) -> SplitDataset:
    path = config.dataset or bundle.file("dataset")
    if not bundle.spec.preprocess.tokenized:  # text, or e-mail (measured on the texts its converter made)
        raise OptimizeError(
            f"{bundle.spec.name}: joules optimize measures accuracy on labelled texts and this model takes "
            f"{bundle.spec.preprocess.kind} inputs; "
            "its graph can still be fused and quantized with the passes in joules.optimize.passes"
        )
    if path is None:
        raise OptimizeError(
            f"{bundle.spec.name} carries no dataset to measure accuracy on; pass --dataset FILE "
            "(JSON lines {split, label, text} with train, validation and test rows)"
        )
    data = SplitDataset.read(Path(path))
    for split in ("train", "validation", "test"):
        data[split]  # DataError naming the missing split
    return data


WORKDIR_PREFIX = ".optimize-"


def _clear_abandoned_workdirs(home: Path) -> None:
    """Remove the variants of runs that were killed: their directory names carry the dead process's id."""
    for d in home.glob(f"{WORKDIR_PREFIX}*-*"):
        pid = d.name[len(WORKDIR_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            log.info("removing %s, left by a run that was killed", d)
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            continue  # alive, another user's


# Measured runs on the 2-core machine took up to this much longer than the estimate below
# (load from other jobs changes within a run); the estimate is scaled by it.
ESTIMATE_MARGIN = 1.3
PROBE_SECONDS = 3.0  # one memory probe: a fresh Python process loading the variant
# PyTorch eager vs ONNX Runtime on the same split, as a multiple of the original's time.
TORCH_COST = 2.0


def _round_seconds(state: RunState, variants: list[float]) -> float:
    """One measurement round: every model once over the test split (as long as scoring a split) + batch-1 calls."""
    assert state.original is not None
    torch = TORCH_COST * state.original.eval_seconds if state.config.torch_reference else 0.0
    return ESTIMATE_MARGIN * (state.original.eval_seconds + sum(variants) + torch)


def _measuring_seconds(state: RunState, plan: list[Recipe]) -> float:
    """What measuring every variant at the end will take, from what scoring them on validation took.

    Each model is scored once more on the test split and timed on it once per
    round, plus a memory probe. For recipes not built yet, the original's time
    is the (pessimistic) guess.
    """
    assert state.original is not None
    built = [c.eval_seconds for c in state.variants]
    todo = max(0, len(plan) - len({c.name.split("+fp32x")[0] for c in state.variants}))
    variants = built + [state.original.eval_seconds] * todo
    rounds = state.preset.measure.rounds
    quality = ESTIMATE_MARGIN * sum(variants)
    return quality + rounds * _round_seconds(state, variants) + PROBE_SECONDS * (len(variants) + 1)


def _rounds_that_fit(state: RunState, deadline: float) -> int:
    """The preset's rounds, or fewer (at least one) when they would overrun the time budget."""
    wanted = state.preset.measure.rounds
    per_round = _round_seconds(state, [c.eval_seconds for c in state.variants])
    left = deadline - time.monotonic() - PROBE_SECONDS * (len(state.variants) + 1)
    rounds = max(1, min(wanted, math.floor(left / per_round))) if per_round > 0 else wanted
    if rounds < wanted:
        log.info("measuring in %d rounds instead of %d to stay within the time budget", rounds, wanted)
    return rounds


def _training_view(data: SplitDataset, rows: int | None, seed: int) -> SplitDataset:
    if rows is None or len(data["train"]) <= rows:
        return data
    idx = np.random.default_rng(seed).permutation(len(data["train"]))[:rows]
    train = data["train"]
    sample = Split([train.texts[i] for i in idx], [train.labels[i] for i in idx])
    return SplitDataset({**data.splits, "train": sample})


def optimize(ref: str, config: OptimizeConfig, *, registry: Registry | None = None) -> RunState:
    """Run every pass asked for on ``ref``, measure, select, register the winner; returns the run's state."""
    from joules.optimize import report

    registry = registry or Registry()
    preset = get_preset(config.preset)
    mv = registry.get(ref)
    root = registry.load(mv.ref)
    meter = EnergyMeter(registry.settings.watts_per_core)
    directory = report.report_dir(registry.settings.reports_dir, mv.ref, datetime.now(UTC))
    state = RunState(mv.ref, config, preset, meter, directory)
    data = _dataset(root, config)
    plan = build_plan(config.passes, preset)
    measure = preset.measure
    deadline = time.monotonic() + config.budget_minutes * 60.0
    registry.home.mkdir(parents=True, exist_ok=True)
    _clear_abandoned_workdirs(registry.home)
    with tempfile.TemporaryDirectory(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-", dir=registry.home) as tmp:
        ctx = PassContext(
            workdir=Path(tmp),
            dataset=_training_view(data, preset.max_train_rows, config.seed),
            seed=config.seed,
            progress=config.progress,
            deadline=deadline,
        )
        t0 = time.perf_counter()
        original = Candidate(
            mv.ref, "original", bundle=root, engine=OnnxEngine(root, batch_size=measure.batch_size, meter=meter)
        )
        measure_quality(original, data, ("validation", "test"), original=None, bootstrap=measure.bootstrap)
        original.eval_seconds = (time.perf_counter() - t0) / 2
        state.original = original
        builder = Builder(
            root, ctx, plan, reserve=lambda: _measuring_seconds(state, plan), min_train_seconds=preset.min_train_seconds
        )
        for recipe in plan:
            state.variants += _build_recipe(recipe, builder, state, data)
        state.seconds["passes"] = round(time.perf_counter() - t0, 1)
        t1 = time.perf_counter()
        for c in state.variants:
            started = time.perf_counter()
            measure_quality(c, data, ("test",), original=original, bootstrap=measure.bootstrap)
            c.eval_seconds = time.perf_counter() - started
        if config.torch_reference:
            state.references += _torch_reference(root, measure.batch_size, meter, state)
        everyone = [original, *state.variants, *state.references]
        state.measure = replace(measure, rounds=_rounds_that_fit(state, deadline))
        log.info("measuring %d models in %d interleaved rounds", len(everyone), state.measure.rounds)
        measure_speed(everyone, data["test"].texts, state.measure, seed=config.seed, progress=config.progress)
        measure_memory([original, *state.variants], data["test"].texts, state.measure)
        state.seconds["measurement"] = round(time.perf_counter() - t1, 1)
        state.selection = select(
            [c.score() for c in state.variants],
            original=original.score(),
            max_f1_drop=config.max_f1_drop,
            objective=config.objective,
            batch_tolerance=state.measure.batch_tolerance,
            allow_batch_dependent=config.allow_batch_dependent,
        )
        if state.selection.chosen is not None:
            winner = next(c for c in state.variants if c.name == state.selection.chosen)
            state.chosen = _register(winner, state, registry)
        state.seconds["total"] = round(time.perf_counter() - state.started, 1)
        state.paths = report.write(state, directory)
    return state


def _build_recipe(recipe: Recipe, builder: Builder, state: RunState, data: SplitDataset) -> list[Candidate]:
    """The recipe's variant (plus its fp32-fallback retries when it misses the budget)."""
    assert state.original is not None
    try:
        built = builder.build(recipe)
        out = [_candidate(recipe.name, recipe.passes, built, data, state)]
    except PassSkipped as e:
        log.info("%s: skipped: %s", recipe.name, e)
        state.skipped.append({"name": recipe.name, "passes": recipe.passes, "reason": str(e)})
        return []
    except Exception as e:
        # One failing pass must not lose a long run: the error is logged, recorded and reported as failed.
        _record_failure(state, recipe.name, recipe.passes, e)
        return []
    if recipe.fallback and _drop(out[-1], state) > state.config.max_f1_drop:
        try:
            if _prefix_within_budget(recipe, builder, data, state):
                out += _fallback(recipe, builder, built, data, state)
            else:
                log.info("%s: no fp32 fallback: the model it quantizes already misses the budget", recipe.name)
        except PassSkipped as e:
            state.skipped.append({"name": f"{recipe.name}+fp32", "passes": recipe.passes, "reason": str(e)})
        except Exception as e:  # the variant itself stands; its fallback is reported as failed
            _record_failure(state, f"{recipe.name}+fp32", [*recipe.passes, "fp32-fallback"], e)
    return out


def _record_failure(state: RunState, name: str, passes: list[str], e: Exception) -> None:
    error = str(e) if isinstance(e, PassFailed) else f"{type(e).__name__}: {e}"
    log.warning("%s: FAILED: %s", name, error, exc_info=log.isEnabledFor(logging.DEBUG))
    state.failed.append({"name": name, "passes": passes, "error": error})


def _prefix_within_budget(recipe: Recipe, builder: Builder, data: SplitDataset, state: RunState) -> bool:
    """Whether the model the last step quantized was within budget: only then can fp32 fallback help."""
    if len(recipe.steps) == 1:
        return True
    prefix = builder.build(recipe, steps=recipe.steps[:-1])
    known = next((c for c in state.variants if c.steps == prefix.steps), None)
    if known is None:
        known = _candidate(f"{recipe.name} (before {recipe.steps[-1].name})", [], prefix, data, state)
    return _drop(known, state) <= state.config.max_f1_drop


def _candidate(name: str, passes: list[str], built: Built, data: SplitDataset, state: RunState) -> Candidate:
    """A built variant, its lineage written beside it, measured on the validation split."""
    assert state.original is not None
    entry = {"step": "optimize", "parent": state.ref, "variant": name, "passes": built.steps}
    bundle = built.bundle.with_spec(lineage=(*state.root.spec.lineage, entry))
    bundle.save()
    measure = state.preset.measure
    c = Candidate(name, "variant", passes=passes, steps=built.steps, bundle=bundle)
    c.engine = OnnxEngine(bundle, batch_size=measure.batch_size, meter=state.meter)
    started = time.perf_counter()
    measure_quality(c, data, ("validation",), original=state.original, bootstrap=measure.bootstrap)
    c.eval_seconds = time.perf_counter() - started
    log.info(
        "%s: validation F1 %.4f (original %.4f)",
        name,
        c.quality["validation"]["f1"],
        state.original.quality["validation"]["f1"],
    )
    return c


def _drop(c: Candidate, state: RunState) -> float:
    assert state.original is not None
    return float((state.original.quality["validation"]["f1"] - c.quality["validation"]["f1"]) * 100)


def _fallback(recipe: Recipe, builder: Builder, built: Built, data: SplitDataset, state: RunState) -> list[Candidate]:
    """Keep the most sensitive quantized operators in fp32, more each time, until the budget is met."""
    quantizer = recipe.steps[-1]
    prefix = builder.build(recipe, steps=recipe.steps[:-1]) if len(recipe.steps) > 1 else Built(builder.root, [])
    feeds = graph.sample_feeds(prefix.bundle, builder.ctx.texts("train"), rows=64, seed=state.config.seed)
    ranked = rank_sensitive_nodes(prefix.bundle.model_path, built.bundle.model_path, feeds, quantizer.op_types)
    total = len(quantizable_nodes(graph.load(prefix.bundle.model_path), quantizer.op_types))
    out: list[Candidate] = []
    tried: set[int] = set()
    for share in state.preset.fallback_shares:
        k = min(len(ranked), max(1, math.ceil(share * total)))
        if k in tried or k == 0:
            continue
        tried.add(k)
        keep = tuple(n for n, _ in ranked[:k])
        steps = (*recipe.steps[:-1], replace(quantizer, exclude=keep))
        name = f"{recipe.name}+fp32x{k}"
        try:
            retry = builder.build(recipe, steps=steps)
        except PassSkipped as e:
            state.skipped.append({"name": name, "passes": recipe.passes, "reason": str(e)})
            break
        except Exception as e:  # recorded and reported, as in _build_recipe
            _record_failure(state, name, [*recipe.passes, "fp32-fallback"], e)
            break
        retry.steps[-1]["details"]["sensitivity"] = [[n, round(s, 5)] for n, s in ranked[:k]]
        c = _candidate(name, [*recipe.passes, "fp32-fallback"], retry, data, state)
        out.append(c)
        if _drop(c, state) <= state.config.max_f1_drop:
            break
    return out


def _torch_reference(root: Bundle, batch_size: int, meter: EnergyMeter, state: RunState) -> list[Candidate]:
    try:
        engine = TorchEngine(root, batch_size=batch_size, meter=meter)
    except PassSkipped as e:  # no torch, or a bundle without trainable weights
        state.skipped.append({"name": "pytorch-eager-fp32", "passes": [], "reason": f"no PyTorch reference: {e}"})
        return []
    except JoulesError as e:  # weights that are there but do not load
        _record_failure(state, "pytorch-eager-fp32", [], e)
        return []
    return [Candidate("pytorch-eager-fp32", "reference", engine=engine)]


def _register(winner: Candidate, state: RunState, registry: Registry) -> dict[str, Any]:
    assert winner.bundle is not None and state.original is not None and state.selection is not None
    name = state.root.spec.name
    entry = {
        "step": "optimize",
        "parent": state.ref,
        "variant": winner.name,
        "passes": winner.steps,
        "settings": {**state.config.to_dict(), "preset_settings": state.preset.to_dict()},
        "selection": state.selection.message,
        "measured": {
            "throughput_msg_s": winner.speed["throughput_msg_s"],
            "latency_ms": winner.speed["latency_ms"],
            "energy_j_per_1000": winner.speed["energy_j_per_1000"],
            # > 0: outputs depend on the rows batched together (dynamic int8); servers that batch
            # requests dynamically make such a model's predictions non-reproducible.
            "batch_dependence": winner.speed.get("batch_dependence"),
            "size_mb": winner.size_mb,
            "peak_rss_mb": winner.memory.get("peak_rss_mb"),
            "original_throughput_msg_s": state.original.speed["throughput_msg_s"],
        },
        "report": str(state.report_dir / "report.json"),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    bundle = winner.bundle.with_spec(
        metrics={"validation": winner.quality["validation"], "test": winner.quality["test"]},
        lineage=(*state.root.spec.lineage, entry),
    )
    bundle.save()
    mv = registry.register(bundle.path, name, stage=Stage.NONE)
    if state.config.promote:
        mv = registry.promote(mv.name, mv.version)
    log.info("registered %s (stage %s)", mv.ref, mv.stage)
    return {"name": mv.name, "version": mv.version, "variant": winner.name, "stage": str(mv.stage)}
