"""``joules optimize`` for text-generation models: weight-only int8 and int4, judged by a generation budget.

Variants: the float32 original, and its MatMul weights (the output head
included) quantized to 8 and to 4 bits (passes/weight_only.py). Each is
measured the same way, one after the other, on the engine's decoder:

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
  engine runs it), and **memory**: the model files and the resident growth
  when the session is created.

The fastest variant (one-stream tokens/s) whose agreement is at least
``min_agreement`` and whose perplexity grew by at most ``max_ppl_increase``
is registered as a new version (the original wins when none qualifies), with
the pass, its settings and the figures in its lineage, and a JSON + Markdown
report is written to ``$JOULES_HOME/reports``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from joules.bundle import Bundle
from joules.errors import ConfigError, OptimizeError
from joules.optimize.passes.weight_only import WeightOnlyQuant
from joules.registry import Registry, Stage
from joules.runtime.executor import RuntimeOptions
from joules.runtime.generation.decoder import StepSequence
from joules.runtime.generation.onnx_decoder import OnnxDecoder, decoder_config
from joules.settings import load_settings

log = logging.getLogger("joules.optimize")

PROMPTS = (
    "What is the capital of France? Answer in one sentence.",
    "Write a short poem about the sea.",
    "Explain photosynthesis to a child.",
    "List three uses of a brick.",
    "How do I boil an egg?",
    "Translate 'good morning' into Spanish and German.",
    "Why is the sky blue?",
    "Give me a name for a friendly robot.",
)
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
VARIANTS = {"int8": WeightOnlyQuant(bits=8), "int4": WeightOnlyQuant(bits=4, symmetric=True)}


@dataclass(frozen=True, kw_only=True)
class DecoderOptimizeConfig:
    variants: tuple[str, ...] = ("int8", "int4")
    min_agreement: float = 0.95  # greedy-token agreement with float32 (teacher-forced)
    max_ppl_increase: float = 0.05  # relative: 0.05 = perplexity at most 5 % higher
    threads: int = 2
    promote: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "variants", tuple(self.variants))
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ConfigError(f"unknown decoder passes {unknown}; choose among {sorted(VARIANTS)}")
        if not 0 <= self.min_agreement <= 1:
            raise ConfigError(f"min_agreement must be in [0, 1], got {self.min_agreement}")
        if not (math.isfinite(self.max_ppl_increase) and self.max_ppl_increase >= 0):
            raise ConfigError(f"max_ppl_increase must be >= 0, got {self.max_ppl_increase}")


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
    resident_mb: float = 0.0
    verdict: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


class _Judge:
    """Runs one decoder through the fixed prompts, the held-out text and the speed probes."""

    def __init__(self, bundle: Bundle, threads: int) -> None:
        from tokenizers import Tokenizer

        from joules.runtime.generation.chat import render_chat

        spec = bundle.spec.generation
        if spec is None:
            raise OptimizeError(f"{bundle.name!r} is not a text-generation model")
        self.spec = spec
        self.tokenizer = Tokenizer.from_file(str(bundle.tokenizer_path))
        template = (bundle.path / spec.chat_template).read_text(encoding="utf-8") if spec.chat_template else None
        self.prompts = []
        for p in PROMPTS:
            text = render_chat(template, [{"role": "user", "content": p}]) if template else p
            self.prompts.append(self.tokenizer.encode(text, add_special_tokens=False).ids)
        # The whole passage when the context holds it (SmolLM2: about 300 tokens), else its beginning.
        self.held_out = self.tokenizer.encode(HELD_OUT, add_special_tokens=False).ids[: spec.context_length // 2]
        self.max_len = min(
            spec.context_length, max(len(self.held_out), *(len(p) for p in self.prompts)) + 2 * NEW_TOKENS
        )
        self.options = RuntimeOptions(intra_op_threads=threads, allow_spinning=True, spin_duration_us=100)

    def open(self, model: Path) -> tuple[OnnxDecoder, float]:
        before = _rss_mb()
        dec = OnnxDecoder(model, decoder_config(self.spec, self.max_len), 16, self.options)
        return dec, _rss_mb() - before

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
        hits = total = 0
        firsts = []
        for p, ref in zip(self.prompts, reference, strict=True):
            seq = np.array(p + ref[:-1] if ref else p)
            rows = dec.step([StepSequence(slot=0, start=0, tokens=seq, all_logits=True)])[0][len(p) - 1 :]
            picks = rows.argmax(axis=1)
            same = picks[: len(ref)] == np.array(ref)
            hits += int(same.sum())
            total += len(ref)
            firsts.append(int(np.argmin(same)) if not same.all() else NEW_TOKENS)
        return hits / max(1, total), float(np.mean(firsts))

    def perplexity(self, dec: OnnxDecoder) -> float:
        ids = np.array(self.held_out)
        logits = dec.step([StepSequence(slot=0, start=0, tokens=ids, all_logits=True)])[0][:-1].astype(np.float64)
        m = logits.max(axis=1, keepdims=True)
        lse = (m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))).astype(np.float64)
        nll = lse - logits[np.arange(len(ids) - 1), ids[1:]]
        return float(np.exp(nll.mean()))

    def speed(self, dec: OnnxDecoder, streams: int, steps: int = 24) -> float:
        prompt = np.array(self.prompts[0])
        for s in range(streams):
            dec.step([StepSequence(slot=s, start=0, tokens=prompt)])
        n = len(prompt)
        dec.step([StepSequence(slot=s, start=n, tokens=np.array([5])) for s in range(streams)])  # warm
        t0 = time.perf_counter()
        for i in range(1, steps + 1):
            dec.step([StepSequence(slot=s, start=n + i, tokens=np.array([5])) for s in range(streams)])
        return streams * steps / (time.perf_counter() - t0)


def optimize_decoder(ref: str, config: DecoderOptimizeConfig | None = None) -> dict[str, Any]:
    """Build, judge and select weight-only variants of the text-generation model ``ref``; the report."""
    config = config or DecoderOptimizeConfig()
    settings = load_settings()
    registry = Registry(settings)
    mv = registry.get(ref)
    root = registry.load(f"{mv.name}:{mv.version}")
    judge = _Judge(root, config.threads)
    started = time.monotonic()
    reports: list[VariantReport] = []
    with tempfile.TemporaryDirectory(prefix="joules-optimize-") as tmp:
        work = Path(tmp)
        models = {"float32": root.model_path}
        for name in config.variants:
            out = work / name
            out.mkdir()
            log.info("writing %s", name)
            VARIANTS[name].write(root.model_path, out / "model.onnx")
            models[name] = out / "model.onnx"
        reference: list[list[int]] = []
        for name, path in models.items():
            log.info("judging %s", name)
            dec, resident = judge.open(path)
            try:
                if name == "float32":
                    reference = judge.greedy(dec)
                settings_ = asdict(VARIANTS[name]) if name in VARIANTS else {}
                r = VariantReport(name=name, settings=settings_)
                r.agreement, r.first_divergence = judge.agreement(dec, reference)
                r.perplexity = judge.perplexity(dec)
                r.tokens_per_s_1 = judge.speed(dec, 1)
                r.tokens_per_s_16 = judge.speed(dec, 16, steps=6)
                r.resident_mb = resident
                r.model_mb = (
                    sum(f.stat().st_size for f in path.parent.iterdir() if f.name.startswith("model.onnx")) / 1e6
                )
                reports.append(r)
            finally:
                dec.close()
        base = reports[0]
        limit = base.perplexity * (1 + config.max_ppl_increase)
        for r in reports:
            if r.agreement < config.min_agreement:
                r.verdict = f"over budget: agreement {r.agreement:.3f} < {config.min_agreement}"
            elif r.perplexity > limit:
                r.verdict = f"over budget: perplexity {r.perplexity:.2f} > {limit:.2f}"
            else:
                r.verdict = "within budget"
        eligible = [r for r in reports if r.verdict == "within budget"]
        winner = max(eligible, key=lambda r: r.tokens_per_s_1) if eligible else base
        chosen = None
        if winner.name != "float32":
            chosen = _register(registry, root, mv.ref, models[winner.name], winner, config)
    report = {
        "model": mv.ref,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "budget": {"min_agreement": config.min_agreement, "max_ppl_increase": config.max_ppl_increase},
        "held_out_text": "Lewis Carroll, Alice's Adventures in Wonderland (1865), chapter 1, first paragraphs",
        "prompts": list(PROMPTS),
        "new_tokens": NEW_TOKENS,
        "threads": config.threads,
        "variants": [asdict(r) for r in reports],
        "winner": winner.name,
        "chosen": chosen,
        "seconds": time.monotonic() - started,
    }
    report["paths"] = _write_report(settings.reports_dir, mv.name, report)
    return report


def _register(
    registry: Registry, root: Bundle, parent: str, model: Path, winner: VariantReport, config: DecoderOptimizeConfig
) -> dict[str, Any]:
    name = parent.split(":")[0]
    with tempfile.TemporaryDirectory(prefix="joules-decoder-") as tmp:
        out = Path(tmp) / "bundle"
        # The Hugging Face weights describe the float32 original, not this graph: they stay with it.
        weights = {root.spec.files.get(r) for r in ("weights", "weights_config")} - {None}
        skip = {"model.onnx", "model.onnx.data", *weights}
        shutil.copytree(root.path, out, ignore=lambda _d, names: [n for n in names if n in skip])
        for f in model.parent.iterdir():
            shutil.copyfile(f, out / f.name)
        entry = {
            "step": "optimize",
            "parent": parent,
            "pass": f"weight-only {winner.name}",
            "settings": winner.settings,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "metrics": {k: v for k, v in asdict(winner).items() if k not in ("name", "settings", "extra")},
        }
        files = {k: v for k, v in root.spec.files.items() if k not in ("weights", "weights_config")}
        bundle = Bundle(out, root.spec).with_spec(lineage=(*root.spec.lineage, entry), files=files)
        bundle.save()
        mv = registry.register(bundle.path, name, stage=Stage.PRODUCTION if config.promote else Stage.NONE)
    log.info("registered %s (%s, stage %s)", mv.ref, winner.name, mv.stage)
    return {"name": mv.name, "version": mv.version, "variant": winner.name, "stage": str(mv.stage)}


def _write_report(directory: Path, name: str, report: dict[str, Any]) -> dict[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    base = directory / f"optimize-{name}-{stamp}"
    rows = [
        "| variant | greedy agreement | first divergence | perplexity | tokens/s (1) | tokens/s (16) | model MB "
        "| verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in report["variants"]:
        rows.append(
            f"| {v['name']} | {v['agreement']:.3f} | {v['first_divergence']:.1f} / {NEW_TOKENS} | "
            f"{v['perplexity']:.2f} | {v['tokens_per_s_1']:.1f} | {v['tokens_per_s_16']:.1f} | "
            f"{v['model_mb']:.0f} | {v['verdict']} |"
        )
    md = "\n".join(
        [
            f"# optimize {report['model']}",
            "",
            f"Budget: greedy-token agreement >= {report['budget']['min_agreement']}, perplexity at most "
            f"{report['budget']['max_ppl_increase']:.0%} higher (held-out text: {report['held_out_text']}).",
            "",
            *rows,
            "",
            f"Winner: {report['winner']}"
            + (
                f", registered as {report['chosen']['name']}:{report['chosen']['version']}"
                if report["chosen"]
                else " (the original: nothing registered)"
            ),
        ]
    )
    base.with_suffix(".json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    base.with_suffix(".md").write_text(md + "\n", encoding="utf-8")
    return {"json": str(base.with_suffix(".json")), "markdown": str(base.with_suffix(".md"))}
