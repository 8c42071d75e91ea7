"""``joules batch`` over a text-generation model: one completion per input row, resumably.

Each row has a ``prompt`` or ``messages`` (a chat; JSONL or Parquet), and an id. A prompt is sent as
``joules generate`` sends it: one user message through the model's chat template (``raw``: as plain text
to complete, as ``joules generate --raw``). The job reads the input in chunks; each chunk goes to the engine at once
(``Engine.generate_many``), so its rows share the running batch (continuous batching: a row that finishes
leaves, the next joins). A chunk's results are appended in input order, made durable (fsync), and only then
is a checkpoint recorded (``JobFiles``, as the classifier job does): after a SIGKILL at any moment, the
next run cuts the outputs back to the checkpoint and recomputes the unfinished chunk, so every input row
ends up exactly once, as an output row or an error row, in input order.

Output rows: ``id``, ``text``, ``finish_reason``, ``prompt_tokens``, ``completion_tokens``, and the row's
cost (``energy_j``, ``usd``, ``co2_g``: its share of every step it was part of). Error rows: ``row``,
``line``, ``id`` and ``reason`` (an unreadable line, no prompt, a prompt over the context, a model output
that is not finite).

Sampling is greedy unless ``temperature`` is given; with a ``seed``, row ``i`` samples with seed
``seed + i``, so a resumed job writes what an uninterrupted one would have.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from joules.errors import ConfigError, DataError, InputError, JoulesError
from joules.meter import Cost, job_cost
from joules.serve.batch import checkpoint
from joules.serve.batch.files import JobFiles
from joules.serve.batch.io import ResultWriter, Row, detect_format, read_rows, result_writer

if TYPE_CHECKING:
    from joules.runtime.generation import Engine, GenerationRequest, GenerationResult

COLUMNS = ["id", "text", "finish_reason", "prompt_tokens", "completion_tokens", "energy_j", "usd", "co2_g"]


@dataclass(frozen=True, kw_only=True)
class GenerationBatchConfig:
    input: Path
    output: Path
    id_column: str = "id"
    prompt_column: str = "prompt"
    messages_column: str = "messages"
    input_format: str | None = None
    output_format: str | None = None
    max_tokens: int = 256
    temperature: float = 0.0  # greedy by default: a batch's outputs are reproducible
    top_p: float = 1.0
    seed: int | None = None
    raw: bool = False  # a prompt as plain text to complete; default: one user message through the chat template
    chunk_rows: int | None = None  # rows per checkpoint; None: twice the engine's running batch
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.chunk_rows is not None and self.chunk_rows < 1:
            raise ConfigError(f"chunk_rows must be >= 1, got {self.chunk_rows}")
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be a whole number >= 1, got {self.max_tokens!r}")
        if self.input.resolve() == self.output.resolve():
            raise ConfigError(f"the output {str(self.output)!r} would overwrite the input; choose another path")

    def params(self) -> dict[str, Any]:
        """What decides the outputs: a resumed job must be run with the same."""
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "raw": self.raw,
        }


@dataclass
class GenerationBatchSummary:
    rows: int = 0
    completed: int = 0
    errors: int = 0
    processed: int = 0  # completions written by this run
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    resumed_from: int = 0
    model: str = ""
    output: str = ""
    errors_file: str = ""
    cost: dict[str, Any] = field(default_factory=dict)
    finish_reasons: dict[str, int] = field(default_factory=dict)
    new_tokens: int = 0  # completion tokens of this run

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "completed": self.completed,
            "processed": self.processed,
            "errors": self.errors,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "completion_tokens_per_s": round(self.new_tokens / self.seconds, 1) if self.seconds > 0 else 0.0,
            "finish_reasons": dict(sorted(self.finish_reasons.items())),
            "resumed_from": self.resumed_from,
            "seconds": round(self.seconds, 2),
            "model": self.model,
            "output": self.output,
            "errors_file": self.errors_file,
            "cost": self.cost,
        }


class GenerationBatchJob:
    def __init__(self, engine: Engine, config: GenerationBatchConfig) -> None:
        if not config.input.is_file():
            raise DataError(f"input file {str(config.input)!r} does not exist")
        self.engine = engine
        self.cfg = config
        self.ref = f"{engine.name}:{engine.version}"
        self.in_fmt = detect_format(config.input, config.input_format)
        self.out_fmt = detect_format(config.output, config.output_format)
        self.files = JobFiles.of(config.output, self.out_fmt)
        self.files.refuse_input(config.input)
        # A CSV has no lists: its rows are prompts. JSONL and Parquet rows may hold either.
        self.sources = {"prompt": config.prompt_column}
        if self.in_fmt != "csv":
            self.sources["messages"] = config.messages_column
        self.chunk = config.chunk_rows or 2 * engine.config.max_num_seqs

    # -- checkpoint --------------------------------------------------------------------------------

    def _load_checkpoint(self) -> dict[str, Any] | None:
        ckpt = checkpoint.load(
            self.files, overwrite=self.cfg.overwrite, fingerprint=lambda: checkpoint.input_fingerprint(self.cfg.input)
        )
        if ckpt is not None and (ckpt.get("model") != self.ref or ckpt.get("params") != self.cfg.params()):
            raise DataError(
                f"the unfinished job at {str(self.cfg.output)!r} ran with {ckpt.get('model')} and "
                f"{ckpt.get('params')}, not {self.ref} and {self.cfg.params()}; resume it with the same "
                "model and flags, or pass --overwrite"
            )
        return ckpt

    # -- run ---------------------------------------------------------------------------------------

    def _writer(self, position: int) -> ResultWriter:
        return result_writer(self.out_fmt, self.files.partial, position, COLUMNS)

    def _chunks(self, skip: int) -> Iterator[list[Row]]:
        chunk: list[Row] = []
        for row in read_rows(self.cfg.input, self.in_fmt, self.sources, self.cfg.id_column, skip=skip):
            chunk.append(row)
            if len(chunk) >= self.chunk:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def run(self) -> GenerationBatchSummary:
        with self.files.running():
            return self._run()

    def _run(self) -> GenerationBatchSummary:
        started = time.perf_counter()
        ckpt = self._load_checkpoint()
        s = GenerationBatchSummary(model=self.ref, output=str(self.cfg.output), errors_file=str(self.files.errors))
        state = checkpoint.initial_state(
            fingerprint=checkpoint.input_fingerprint(self.cfg.input),
            model=self.ref,
            params=self.cfg.params(),
            completed=0,
            prompt_tokens=0,
            completion_tokens=0,
            finish_reasons={},
        )
        s.resumed_from, s.processed = checkpoint.run_to_end(
            self.files, state, ckpt, self._writer, self._completed(state, s), progress=self.cfg.progress
        )
        s.rows, s.completed, s.errors = state["rows_done"], state["completed"], state["errors"]
        s.prompt_tokens, s.completion_tokens = state["prompt_tokens"], state["completion_tokens"]
        s.finish_reasons = dict(state["finish_reasons"])
        s.seconds = time.perf_counter() - started
        meter = self.engine.meter
        total = Cost(
            energy_j=state["energy_j"],
            usd=state["usd"],
            co2_g=state["co2_g"],
            cpu_s=state["cpu_s"],
            method=meter.method if meter is not None else "modelled",
            how=meter.how if meter is not None else "",
        )
        s.cost = job_cost(total, s.completed)
        s.cost["per_1m_completion_tokens"] = _per_million(total, s.completion_tokens)
        return s

    def _completed(
        self, state: dict[str, Any], s: GenerationBatchSummary
    ) -> Iterator[tuple[list[Row], list[dict[str, Any]], list[dict[str, Any]]]]:
        """Each chunk after the last one done, with its output rows and error rows."""
        for chunk in self._chunks(state["rows_done"]):
            yield chunk, *self._complete(chunk, state, s)

    def _request(self, row: Row) -> GenerationRequest:
        """The row's request, its prompt tokenized and checked against the context (InputError: an error row)."""
        from joules.runtime.generation import SamplingParams, encoded_request

        fields = row.fields or {}
        prompt, messages = fields.get("prompt"), fields.get("messages")
        if (prompt is None) == (messages is None):
            raise InputError(
                f"a row needs exactly one of {self.cfg.prompt_column!r} (text) or {self.cfg.messages_column!r} (a chat)"
            )
        cfg = self.cfg
        params = SamplingParams(
            max_tokens=cfg.max_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            seed=None if cfg.seed is None else cfg.seed + row.index,
        )
        if messages is None and not isinstance(prompt, str):
            raise InputError(f"{cfg.prompt_column!r} must be a string, got {type(prompt).__name__}")
        return encoded_request(
            self.engine,
            prompt=prompt,
            messages=messages,
            params=params,
            raw=cfg.raw,
            request_id=f"row-{row.index}",
        )

    def _complete(
        self, chunk: list[Row], state: dict[str, Any], s: GenerationBatchSummary
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        requests: dict[int, GenerationRequest] = {}
        reasons: dict[int, str] = {}
        for r in chunk:
            if r.error is not None:
                reasons[r.index] = r.error
                continue
            try:
                requests[r.index] = self._request(r)
            except JoulesError as e:
                reasons[r.index] = str(e)
        results: dict[int, GenerationResult] = {}
        if requests:
            done = self.engine.generate_many(list(requests.values()))
            results = dict(zip(requests, done, strict=True))
        out_rows: list[dict[str, Any]] = []
        err_rows: list[dict[str, Any]] = []
        for r in chunk:
            res = results.get(r.index)
            if res is not None:
                for k in ("energy_j", "cpu_s", "usd", "co2_g"):
                    state[k] += getattr(res.cost, k)
                if res.finish_reason in ("error", "abort"):
                    reasons[r.index] = res.error or f"the completion ended with {res.finish_reason}"
            reason = reasons.get(r.index)
            if reason is not None or res is None:
                err_rows.append(
                    {"row": r.index, **({"line": r.line} if r.line else {}), "id": r.id, "reason": reason or "not run"}
                )
                continue
            out_rows.append({"id": r.id, **res.fields()})
            state["prompt_tokens"] += res.usage.prompt_tokens
            state["completion_tokens"] += res.usage.completion_tokens
            s.new_tokens += res.usage.completion_tokens
            state["finish_reasons"][res.finish_reason] = state["finish_reasons"].get(res.finish_reason, 0) + 1
        state["completed"] += len(out_rows)
        state["errors"] += len(err_rows)
        return out_rows, err_rows


def _per_million(total: Cost, tokens: int) -> dict[str, float]:
    per = 1e6 / tokens if tokens > 0 else 0.0
    return {"energy_j": total.energy_j * per, "usd": total.usd * per, "co2_g": total.co2_g * per}


def run_generation_batch(engine: Engine, config: GenerationBatchConfig) -> GenerationBatchSummary:
    return GenerationBatchJob(engine, config).run()
