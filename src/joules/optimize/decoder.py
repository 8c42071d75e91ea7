"""``joules optimize`` for text-generation models: int8 and int4 variants, judged by a generation budget.

Variants: the float32 original, and

- its MatMul weights (the output head included) quantized to 8 and to 4 bits
  in blocks of 32, symmetric (``int8``, ``int4``) and with a zero point per
  block (``int8-asym``, ``int4-asym``): ONNX Runtime's ``MatMulNBits``
  contrib operator for both widths (passes/weight_only.py); these save memory
  reads, which is what one stream waits for;
- ``w8a8``: int8 weights per output column and int8 activations per row, the
  products in integers (``MatMulInteger``, passes/w8a8.py); faster at every
  batch size, batched decoding included.

Each variant is a bundle the same engine serves
unchanged; each is measured the same way on the engine's decoder:

- **greedy-token agreement** with the float32 model over a fixed set of chat
  prompts: the original's greedy continuation (32 tokens, or to its end) is fed
  to the variant, which must pick the same next token at each position
  (teacher forcing, so one early difference does not hide the rest); the
  first position where the variant's own greedy text would leave the
  original's is reported too;
- **perplexity** on held-out text: the first paragraphs of Lewis Carroll's
  *Alice's Adventures in Wonderland* (1865; public domain), a text no chat
  model was tuned to answer;
- **decode tokens/s** of one stream and of 16 streams (CPU, the decoder as the
  engine runs it; every variant is timed in each of ``rounds`` interleaved
  rounds and its median kept, so load from other processes falls on all of
  them alike), and **memory**: the model files, and the peak resident memory
  of a fresh process whose engine serves the variant's bundle to 16 streams
  (which also proves the engine serves it).

The fastest variant (one-stream tokens/s; the smallest with ``objective``
"size") whose agreement is at least
``min_agreement`` and whose perplexity grew by at most ``max_ppl_increase``
is registered as a new version (the original wins when none qualifies), with
the pass, its settings and the figures in its lineage; variants outside the
budget are not kept. ``report.json`` and ``report.md`` are written to
``$JOULES_HOME/reports/optimize-<name>-<version>-<UTC time>/``, as for
classifiers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from joules.bundle import Bundle
from joules.errors import ConfigError, JoulesError, OptimizeError
from joules.optimize.memory import probe_generation
from joules.optimize.passes.w8a8 import W8A8Quant
from joules.optimize.passes.weight_only import WeightOnlyQuant
from joules.registry import Registry, Stage
from joules.runtime.executor import RuntimeOptions
from joules.runtime.generation.decoder import StepSequence
from joules.runtime.generation.onnx_decoder import OnnxDecoder, decoder_config

log = logging.getLogger("joules.optimize")

# 16 chat prompts x 32 greedy tokens: 512 positions compared, so one changed token moves agreement by 0.2 %.
PROMPTS = (
    "What is the capital of France? Answer in one sentence.",
    "Write a short poem about the sea.",
    "Explain photosynthesis to a child.",
    "List three uses of a brick.",
    "How do I boil an egg?",
    "Translate 'good morning' into Spanish and German.",
    "Why is the sky blue?",
    "Give me a name for a friendly robot.",
    "What is 17 times 3?",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "Write a Python function that reverses a string.",
    "What are the three states of matter?",
    "Suggest a healthy breakfast.",
    "Who wrote 'Pride and Prejudice'?",
    "Describe a cat to someone who has never seen one.",
    "What should I pack for a weekend of hiking?",
)
# Calibration for passes that measure activations (w8a8's smoothing): chat prompts that are not PROMPTS, so the
# agreement is judged on text the variant was not fitted to.
CALIBRATION_PROMPTS = (
    "Tell me about the history of the bicycle.",
    "How does a refrigerator keep food cold?",
    "Write a haiku about autumn leaves.",
    "What is the difference between weather and climate?",
    "Give three tips for learning a new language.",
    "Explain what a prime number is, with examples.",
    "Draft a polite email asking to move a meeting to Friday.",
    "Why do we have leap years?",
)
HELD_OUT_SOURCE = "Lewis Carroll, Alice's Adventures in Wonderland (1865), chapter 1, first paragraphs"
HELD_OUT = (
    "Alice was beginning to get very tired of sitting by her sister on the bank, and of having nothing to do: "
    "once or twice she had peeped into the book her sister was reading, but it had no pictures or conversations "
    "in it, 'and what is the use of a book,' thought Alice 'without pictures or conversations?' So she was "
    "considering in her own mind (as well as she could, for the hot day made her feel very sleepy and stupid), "
    "whether the pleasure of making a daisy-chain would be worth the trouble of getting up and picking the "
    "daisies, when suddenly a White Rabbit with pink eyes ran close by her. There was nothing so very remarkable "
    "in that; nor did Alice think it so very much out of the way to hear the Rabbit say to itself, 'Oh dear! Oh "
    "dear! I shall be late!' (when she thought it over afterwards, it occurred to her that she ought to have "
    "wondered at this, but at the time it all seemed quite natural); but when the Rabbit actually took a watch "
    "out of its waistcoat-pocket, and looked at it, and then hurried on, Alice started to her feet, for it "
    "flashed across her mind that she had never before seen a rabbit with either a waistcoat-pocket, or a watch "
    "to take out of it, and burning with curiosity, she ran across the field after it, and fortunately was just "
    "in time to see it pop down a large rabbit-hole under the hedge."
)
NEW_TOKENS = 32


class DecoderPass(Protocol):
    """Writes a variant of a decoder graph: ``src`` (+ external data) -> ``dst`` (+ ``dst.name``.data)."""

    def write(self, src: Path, dst: Path) -> dict[str, Any]: ...


# Weight-only, symmetric: one scale per block of 32; asymmetric: a scale and a zero point (llama.cpp's Q4_1 is
# the latter). w8a8: int8 weights and activations, integer products.
VARIANTS: dict[str, DecoderPass] = {
    "int8": WeightOnlyQuant(bits=8, symmetric=True),
    "int8-asym": WeightOnlyQuant(bits=8, symmetric=False),
    "int4": WeightOnlyQuant(bits=4, symmetric=True),
    "int4-asym": WeightOnlyQuant(bits=4, symmetric=False),
    "w8a8": W8A8Quant(),
}
FLOAT32 = "float32"
MEMORY_STREAMS = 16


@dataclass(frozen=True, kw_only=True)
class DecoderOptimizeConfig:
    variants: tuple[str, ...] = tuple(VARIANTS)
    min_agreement: float = 0.95  # greedy-token agreement with float32 (teacher-forced)
    max_ppl_increase: float = 0.05  # relative: 0.05 = perplexity at most 5 % higher
    threads: int = 2
    rounds: int = 3  # interleaved speed rounds; each variant's median is reported
    memory_probe: bool = True  # serve each bundle in a fresh process and record its peak memory
    objective: str = "speed"  # the winner within budget: "speed" (one-stream tokens/s) or "size" (model MB)
    promote: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "variants", tuple(self.variants))
        if not self.variants:
            raise ConfigError(f"name at least one decoder pass; choose among {list(VARIANTS)}")
        if len(set(self.variants)) != len(self.variants) or FLOAT32 in self.variants:
            raise ConfigError(f"decoder passes must be distinct and not {FLOAT32!r}, got {list(self.variants)}")
        if not 0 <= self.min_agreement <= 1:
            raise ConfigError(f"min_agreement must be in [0, 1], got {self.min_agreement}")
        if not (math.isfinite(self.max_ppl_increase) and self.max_ppl_increase >= 0):
            raise ConfigError(f"max_ppl_increase must be >= 0, got {self.max_ppl_increase}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise ConfigError(f"threads must be a whole number >= 1, got {self.threads!r}")
        if self.objective not in ("speed", "size"):
            raise ConfigError(f"objective must be 'speed' or 'size', got {self.objective!r}")
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise ConfigError(f"rounds must be a whole number >= 1, got {self.rounds!r}")


@dataclass
class VariantReport:
    name: str
    settings: dict[str, Any]
    agreement: float = 0.0
    first_divergence: float = 0.0  # mean position of the first differing greedy token, in [0, NEW_TOKENS]
    perplexity: float = 0.0
    tokens_per_s_1: float = 0.0
    tokens_per_s_16: float = 0.0
    model_mb: float = 0.0
    peak_rss_mb: float | None = None  # a fresh process serving the bundle to 16 streams
    resident_mb: float | None = None  # what loading the model and running them added to it
    verdict: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class _Judge:
    """Runs one decoder through the fixed prompts, the held-out text and the speed probes."""

    def __init__(self, bundle: Bundle, threads: int) -> None:
        from tokenizers import Tokenizer

        from joules.runtime.generation.chat import render_chat

        spec = bundle.spec.generation
        if spec is None:
            raise OptimizeError(
                f"{bundle.name!r} is not a text-generation model; joules optimize judges decoders only "
                "for bundles imported with `joules import FILE.gguf` or a causal LM directory"
            )
        self.spec = spec
        self.tokenizer = Tokenizer.from_file(str(bundle.tokenizer_path))
        template = (bundle.path / spec.chat_template).read_text(encoding="utf-8") if spec.chat_template else None

        def encode(p: str) -> list[int]:
            text = render_chat(template, [{"role": "user", "content": p}]) if template else p
            return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

        self.prompts = [encode(p) for p in PROMPTS]
        self.calibration = tuple(tuple(encode(p)) for p in CALIBRATION_PROMPTS)
        # The whole passage when the context holds it (SmolLM2: about 300 tokens), else its beginning.
        self.held_out = self.tokenizer.encode(HELD_OUT, add_special_tokens=False).ids[: spec.context_length // 2]
        self.max_len = min(
            spec.context_length, max(len(self.held_out), *(len(p) for p in self.prompts)) + 2 * NEW_TOKENS
        )
        self.options = RuntimeOptions(intra_op_threads=threads, allow_spinning=True, spin_duration_us=100)

    def open(self, model: Path) -> OnnxDecoder:
        return OnnxDecoder(model, decoder_config(self.spec, self.max_len), 16, self.options)

    def greedy(self, dec: OnnxDecoder) -> list[list[int]]:
        eos = set(self.spec.eos_token_ids)
        outs = []
        for p in self.prompts:
            logits = dec.step([StepSequence(slot=0, start=0, tokens=np.array(p))])[0]
            out: list[int] = []
            while len(out) < NEW_TOKENS:
                t = int(np.argmax(logits))
                out.append(t)
                if t in eos:
                    break
                logits = dec.step([StepSequence(slot=0, start=len(p) + len(out) - 1, tokens=np.array([t]))])[0]
            outs.append(out)
        return outs

    def agreement(self, dec: OnnxDecoder, reference: list[list[int]]) -> tuple[float, float]:
        """Teacher-forced: the share of the reference's positions where this decoder's greedy token is the same.

        A row with a non-finite logit agrees nowhere (argmax would pick whatever NaN compares to).
        """
        hits = total = 0
        firsts = []
        for p, ref in zip(self.prompts, reference, strict=True):
            seq = np.array(p + ref[:-1] if ref else p)
            rows = dec.step([StepSequence(slot=0, start=0, tokens=seq, all_logits=True)])[0][len(p) - 1 :]
            picks = rows.argmax(axis=1)
            same = (picks[: len(ref)] == np.array(ref)) & np.isfinite(rows[: len(ref)]).all(axis=1)
            hits += int(same.sum())
            total += len(ref)
            firsts.append(int(np.argmin(same)) if not same.all() else NEW_TOKENS)
        return hits / max(1, total), float(np.mean(firsts))

    def perplexity(self, dec: OnnxDecoder) -> float:
        """exp(mean negative log-likelihood) of each held-out token given those before it; inf if not finite."""
        ids = np.array(self.held_out)
        logits = dec.step([StepSequence(slot=0, start=0, tokens=ids, all_logits=True)])[0][:-1].astype(np.float64)
        if not np.isfinite(logits).all():
            return math.inf
        m = logits.max(axis=1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))
        nll = lse - logits[np.arange(len(ids) - 1), ids[1:]]
        with np.errstate(over="ignore"):
            return float(np.exp(nll.mean()))

    def speed(self, dec: OnnxDecoder, streams: int, steps: int) -> float:
        """Decode tokens/s of ``streams`` sequences stepping together after the first prompt."""
        prompt = np.array(self.prompts[0])
        for s in range(streams):
            dec.step([StepSequence(slot=s, start=0, tokens=prompt)])
        n = len(prompt)
        dec.step([StepSequence(slot=s, start=n, tokens=np.array([5])) for s in range(streams)])  # warm
        t0 = time.perf_counter()
        for i in range(1, steps + 1):
            dec.step([StepSequence(slot=s, start=n + i, tokens=np.array([5])) for s in range(streams)])
        return streams * steps / (time.perf_counter() - t0)


def _settings(p: DecoderPass) -> dict[str, Any]:
    if dataclasses.is_dataclass(p) and not isinstance(p, type):
        settings = asdict(p)
        if "calibration" in settings:  # token ids: the lineage says how many, not which
            settings["calibration"] = f"{len(settings['calibration'])} chat prompts (optimize/decoder.py)"
        return {"pass": type(p).__name__, **settings}
    return {"pass": type(p).__name__}


def _calibrated(p: DecoderPass, judge: _Judge) -> DecoderPass:
    """``p`` with the judge's calibration texts when it measures activations and was given none."""
    if isinstance(p, W8A8Quant) and p.smooth_alpha > 0 and not p.calibration:
        return dataclasses.replace(p, calibration=judge.calibration)
    return p


def _operator(p: DecoderPass) -> str:
    """The ONNX operator a pass writes (its ``operator``), for lineages and reports."""
    return str(getattr(p, "operator", type(p).__name__))


def _files_mb(bundle: Path) -> float:
    return sum(f.stat().st_size for f in bundle.iterdir() if f.name.startswith("model.onnx")) / 1e6


def _variant_bundle(root: Bundle, out: Path, name: str, p: DecoderPass, parent: str) -> tuple[Bundle, dict[str, Any]]:
    """A bundle beside the original's files whose decoder graph ``p`` wrote (unregistered)."""
    # The Hugging Face weights describe the float32 original, not this graph: they stay with it.
    weights = {root.spec.files.get(r) for r in ("weights", "weights_config")} - {None}
    skip = {"model.onnx", "model.onnx.data", *weights}
    shutil.copytree(root.path, out, ignore=lambda _d, names: [n for n in names if n in skip])
    info = p.write(root.model_path, out / "model.onnx")
    kind = getattr(p, "name", name)
    entry = {
        "step": "optimize",
        "parent": parent,
        "pass": name if kind == name else f"{kind} {name}",  # e.g. "weight-only int4", "w8a8"
        "operator": _operator(p),
        "settings": _settings(p),
        "written": info,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    files = {k: v for k, v in root.spec.files.items() if k not in ("weights", "weights_config")}
    bundle = Bundle(out, root.spec).with_spec(lineage=(*root.spec.lineage, entry), files=files)
    bundle.save()
    return Bundle.load(out), info


def _judge_all(
    judge: _Judge, bundles: dict[str, Bundle], reports: dict[str, VariantReport], config: DecoderOptimizeConfig
) -> None:
    """Quality one model at a time, then speed in interleaved rounds with every decoder open."""
    decoders: dict[str, OnnxDecoder] = {}
    try:
        reference: list[list[int]] = []
        for name, bundle in bundles.items():
            log.info("judging %s", name)
            dec = decoders[name] = judge.open(bundle.model_path)
            if name == FLOAT32:
                reference = judge.greedy(dec)
            r = reports[name]
            r.agreement, r.first_divergence = judge.agreement(dec, reference)
            r.perplexity = judge.perplexity(dec)
            r.model_mb = _files_mb(bundle.path)
        one: dict[str, list[float]] = {n: [] for n in decoders}
        many: dict[str, list[float]] = {n: [] for n in decoders}
        names = list(decoders)
        for k in range(config.rounds):
            log.info("speed round %d of %d", k + 1, config.rounds)
            for name in names[k % len(names) :] + names[: k % len(names)]:  # a different one first each round
                one[name].append(judge.speed(decoders[name], 1, steps=24))
                many[name].append(judge.speed(decoders[name], 16, steps=6))
        for name in names:
            reports[name].tokens_per_s_1 = statistics.median(one[name])
            reports[name].tokens_per_s_16 = statistics.median(many[name])
            reports[name].extra["tokens_per_s_1_rounds"] = one[name]
            reports[name].extra["tokens_per_s_16_rounds"] = many[name]
    finally:
        for dec in decoders.values():
            dec.close()


def _verdict(r: VariantReport, base: VariantReport, config: DecoderOptimizeConfig) -> str:
    limit = base.perplexity * (1 + config.max_ppl_increase)
    if r.extra.get("serve_error"):
        return f"failed: {r.extra['serve_error']}"
    if r.agreement < config.min_agreement:
        return f"over budget: agreement {r.agreement:.3f} < {config.min_agreement}"
    if not math.isfinite(r.perplexity):
        return "over budget: perplexity not finite"
    if r.perplexity > limit:
        return f"over budget: perplexity {r.perplexity:.2f} > {limit:.2f}"
    return "within budget"


def optimize_decoder(
    ref: str,
    config: DecoderOptimizeConfig | None = None,
    *,
    registry: Registry | None = None,
    passes: Mapping[str, DecoderPass] | None = None,
) -> dict[str, Any]:
    """Build, judge and select quantized variants of the text-generation model ``ref``; the report.

    ``passes`` adds (or replaces) named passes beside ``VARIANTS`` (tests inject a broken one).
    """
    from joules.optimize.report import machine, report_dir
    from joules.optimize.run import WORKDIR_PREFIX, _clear_abandoned_workdirs

    config = config or DecoderOptimizeConfig()
    known: dict[str, DecoderPass] = {**VARIANTS, **(passes or {})}
    unknown = [v for v in config.variants if v not in known]
    if unknown:
        raise ConfigError(f"unknown decoder passes {unknown}; choose among {list(known)}")
    registry = registry or Registry()
    mv = registry.get(ref)
    root = registry.load(mv.ref)
    judge = _Judge(root, config.threads)
    started = time.monotonic()
    when = datetime.now(UTC)
    directory = report_dir(registry.settings.reports_dir, mv.ref, when)
    reports: dict[str, VariantReport] = {FLOAT32: VariantReport(name=FLOAT32, settings={})}
    failed: list[dict[str, Any]] = []
    registry.home.mkdir(parents=True, exist_ok=True)
    _clear_abandoned_workdirs(registry.home)
    with tempfile.TemporaryDirectory(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-", dir=registry.home) as tmp:
        bundles: dict[str, Bundle] = {FLOAT32: root}
        for name in config.variants:
            log.info("writing %s", name)
            known[name] = _calibrated(known[name], judge)
            try:
                bundles[name], info = _variant_bundle(root, Path(tmp) / name, name, known[name], mv.ref)
            except JoulesError as e:  # one pass that does not apply must not lose the others
                log.warning("%s: FAILED: %s", name, e)
                failed.append({"name": name, "error": str(e)})
                continue
            reports[name] = VariantReport(
                name=name,
                settings={**_settings(known[name]), "operator": _operator(known[name])},
                extra={"written": info},
            )
        _judge_all(judge, bundles, reports, config)
        if config.memory_probe:
            for name, bundle in bundles.items():
                log.info("serving %s in a fresh process (memory)", name)
                try:
                    mem = probe_generation(bundle.path, MEMORY_STREAMS, config.threads)
                except OptimizeError as e:
                    reports[name].extra["serve_error"] = str(e)
                    continue
                reports[name].extra["served_tokens"] = mem["tokens"]
                reports[name].peak_rss_mb = mem["peak_rss_mb"]
                reports[name].resident_mb = mem["model_mb"]
        base = reports[FLOAT32]
        for r in reports.values():
            r.verdict = _verdict(r, base, config)
        eligible = [r for r in reports.values() if r.verdict == "within budget"]
        if not eligible:
            winner = base
        elif config.objective == "size":
            winner = min(eligible, key=lambda r: r.model_mb)
        else:
            winner = max(eligible, key=lambda r: r.tokens_per_s_1)
        chosen = None
        if winner.name != FLOAT32:
            chosen = _register(registry, bundles[winner.name], mv.name, winner, directory, config)
    report: dict[str, Any] = {
        "model": mv.ref,
        "task": "text-generation",
        "created_at": when.isoformat(timespec="seconds"),
        "machine": machine(),
        "onnxruntime": _ort_version(),
        "budget": {"min_agreement": config.min_agreement, "max_ppl_increase": config.max_ppl_increase},
        "agreement": "teacher-forced greedy-token agreement with float32 over the prompts' float32 continuations",
        "held_out_text": HELD_OUT_SOURCE,
        "held_out_tokens": len(judge.held_out),
        "prompts": list(PROMPTS),
        "new_tokens": NEW_TOKENS,
        "threads": config.threads,
        "rounds": config.rounds,
        "objective": config.objective,
        "variants": [_finite(asdict(r)) for r in reports.values()],
        "failed": failed,
        "winner": winner.name,
        "chosen": chosen,
        "seconds": round(time.monotonic() - started, 1),
    }
    report["paths"] = _write_report(directory, report)
    return report


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def _finite(v: Any) -> Any:
    """Strict JSON: a non-finite float (a broken variant's perplexity) is written as null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    return v


def _register(
    registry: Registry,
    bundle: Bundle,
    name: str,
    winner: VariantReport,
    directory: Path,
    config: DecoderOptimizeConfig,
) -> dict[str, Any]:
    entry = dict(bundle.spec.lineage[-1])
    entry["metrics"] = _finite({k: v for k, v in asdict(winner).items() if k not in ("name", "settings", "extra")})
    entry["report"] = str(directory / "report.json")
    bundle = bundle.with_spec(lineage=(*bundle.spec.lineage[:-1], entry))
    bundle.save()
    mv = registry.register(bundle.path, name, stage=Stage.PRODUCTION if config.promote else Stage.NONE)
    log.info("registered %s (%s, stage %s)", mv.ref, winner.name, mv.stage)
    return {"name": mv.name, "version": mv.version, "variant": winner.name, "stage": str(mv.stage)}


def _num(v: float | None, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def _write_report(directory: Path, report: dict[str, Any]) -> dict[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    rows = [
        "| variant | greedy agreement | first divergence | perplexity | tokens/s (1) | tokens/s (16) | model MB "
        "| peak RSS MB | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v in report["variants"]:
        rows.append(
            f"| {v['name']} | {v['agreement']:.3f} | {v['first_divergence']:.1f} / {NEW_TOKENS} | "
            f"{_num(v['perplexity'], '.2f')} | {v['tokens_per_s_1']:.1f} | {v['tokens_per_s_16']:.1f} | "
            f"{v['model_mb']:.0f} | {_num(v['peak_rss_mb'], '.0f')} | {v['verdict']} |"
        )
    failed = [f"- {f['name']}: FAILED: {f['error']}" for f in report["failed"]]
    md = "\n".join(
        [
            f"# optimize {report['model']} (text generation)",
            "",
            f"Budget: greedy-token agreement >= {report['budget']['min_agreement']} ({report['agreement']}; "
            f"{len(report['prompts'])} chat prompts x {NEW_TOKENS} tokens), perplexity at most "
            f"{report['budget']['max_ppl_increase']:.0%} higher on held-out text ({report['held_out_text']}, "
            f"{report['held_out_tokens']} tokens).",
            "",
            f"Operators (ONNX Runtime {report['onnxruntime']}): "
            + "; ".join(f"{v['name']}: {v['settings']['operator']}" for v in report["variants"] if v["settings"])
            + ". int8/int4: blocks of 32 along the input dimension, float32 scales; -asym adds a zero point per "
            "block. Speed: decode tokens/s of the decoder with "
            f"{report['threads']} threads, median of {report['rounds']} interleaved rounds. Peak RSS: a fresh "
            "process whose engine serves the bundle to 16 streams.",
            "",
            *rows,
            *(["", *failed] if failed else []),
            "",
            f"Winner: {report['winner']}"
            + (
                f", registered as {report['chosen']['name']}:{report['chosen']['version']}"
                if report["chosen"]
                else " (the original: nothing registered)"
            ),
        ]
    )
    (directory / "report.json").write_text(json.dumps(report, indent=1, allow_nan=False), encoding="utf-8")
    (directory / "report.md").write_text(md + "\n", encoding="utf-8")
    return {"json": str(directory / "report.json"), "markdown": str(directory / "report.md")}
