"""Defaults live in the configuration dataclasses: a command with no flags runs exactly them,
and each concept has one default in every mode."""

from __future__ import annotations

from pathlib import Path

from joules.cli.common import runtime_options
from joules.cli.main import build_parser
from joules.cli.predict import batch_config_from_args
from joules.cli.serve import config_from_args as serve_config
from joules.cli.stream import config_from_args as stream_config
from joules.runtime.batching import BatchingConfig
from joules.runtime.limits import MAX_CALL_ROWS, MAX_CALL_TOKENS, MAX_TEXT_BYTES, WINDOW_ROWS
from joules.runtime.options import RuntimeOptions
from joules.serve.batch.config import BatchConfig
from joules.serve.online.config import ServeConfig
from joules.serve.stream.config import StreamConfig


def test_serve_with_no_flags_runs_exactly_serve_config() -> None:
    args = build_parser().parse_args(["serve"])
    assert serve_config(args) == ServeConfig()
    assert serve_config(build_parser().parse_args(["serve", "--batch-window", "8"])).batching.window_rows == 8


def test_batch_with_no_flags_runs_the_dataclass_defaults(tmp_path: Path) -> None:
    args = build_parser().parse_args(["batch", "spam", str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.csv")])
    assert batch_config_from_args(args) == BatchConfig(input=tmp_path / "in.csv", output=tmp_path / "out.csv")
    options = runtime_options(args, max_batch_size=args.batch_size, max_text_bytes=args.max_text_bytes)
    assert options == RuntimeOptions()


def test_stream_with_no_flags_runs_the_dataclass_defaults() -> None:
    args = build_parser().parse_args(["stream", "spam", "--source", "-", "--consumer", "c"])
    assert stream_config(args) == StreamConfig(group="spam", consumer="c")
    options = runtime_options(args, max_batch_size=args.call_rows, max_text_bytes=args.max_text_bytes)
    assert options == RuntimeOptions()


def test_one_default_per_concept_in_every_mode() -> None:
    rows = {
        "RuntimeOptions": RuntimeOptions().max_batch_size,
        "BatchingConfig (serve --max-batch-size)": BatchingConfig().max_batch_size,
        "batch --batch-size": build_parser().parse_args(["batch", "m", "i.csv", "-o", "o.csv"]).batch_size,
        "stream --call-rows": build_parser().parse_args(["stream", "m", "--source", "-"]).call_rows,
    }
    assert set(rows.values()) == {MAX_CALL_ROWS}, rows
    assert RuntimeOptions().max_batch_tokens == BatchingConfig().max_batch_tokens == MAX_CALL_TOKENS
    assert BatchingConfig().window_rows == StreamConfig(group="g", consumer="c").batch_size == WINDOW_ROWS
    text = {
        RuntimeOptions().max_text_bytes,
        ServeConfig().max_text_bytes,
        StreamConfig(group="g", consumer="c").max_text_bytes,
        build_parser().parse_args(["batch", "m", "i.csv", "-o", "o.csv"]).max_text_bytes,
    }
    assert text == {MAX_TEXT_BYTES}


def test_help_shows_the_dataclass_defaults() -> None:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = " ".join(out.getvalue().split())
    assert f"rows per model call (default {MAX_CALL_ROWS})" in text
    assert f"(default {ServeConfig().timeout_ms})" in text


def test_one_default_per_engine_limit_in_every_mode() -> None:
    """The generation engine's limits: one default each (runtime/limits.py) in the engine, serve, batch and stream."""
    from joules.runtime.generation.scheduler import EngineConfig
    from joules.runtime.limits import MAX_MODEL_LEN, MAX_NUM_BATCHED_TOKENS, MAX_NUM_SEQS, PREFIX_CACHE_SLOTS

    batch = build_parser().parse_args(["batch", "chat", "i.jsonl", "-o", "o.jsonl"])
    stream = build_parser().parse_args(["stream", "chat", "--source", "-"])
    limits = {
        "max_model_len": MAX_MODEL_LEN,
        "max_num_seqs": MAX_NUM_SEQS,
        "max_num_batched_tokens": MAX_NUM_BATCHED_TOKENS,
        "prefix_cache_slots": PREFIX_CACHE_SLOTS,
    }
    for name, default in limits.items():
        seen = [getattr(x, name) for x in (EngineConfig(), ServeConfig(), batch, stream)]
        assert seen == [default] * 4, (name, seen)


def test_prefix_cache_slots_reach_serve_and_a_negative_count_is_refused() -> None:
    import pytest

    from joules.errors import ConfigError

    assert serve_config(build_parser().parse_args(["serve", "--prefix-cache-slots", "0"])).prefix_cache_slots == 0
    with pytest.raises(ConfigError, match=r"prefix_cache_slots must be a whole number >= 0, got -1"):
        serve_config(build_parser().parse_args(["serve", "--prefix-cache-slots", "-1"]))


def test_the_step_budget_reaches_serve_and_one_under_the_running_sequences_is_refused() -> None:
    """--max-num-batched-tokens: a budget under the running sequences is refused with what to change,
    before anything loads."""
    import pytest

    from joules.errors import ConfigError
    from joules.runtime.generation.scheduler import EngineConfig

    args = build_parser().parse_args(["serve", "chat", "--max-num-batched-tokens", "32", "--max-num-seqs", "8"])
    assert serve_config(args).max_num_batched_tokens == 32
    bad = build_parser().parse_args(["serve", "chat", "--max-num-batched-tokens", "4", "--max-num-seqs", "8"])
    with pytest.raises(ConfigError, match=r"max_num_batched_tokens \(4\) must be >= max_num_seqs \(8\).*--max-num"):
        serve_config(bad)
    with pytest.raises(ConfigError, match=r"max_num_batched_tokens \(8\) must be >= max_num_seqs \(64\)"):
        EngineConfig(max_num_batched_tokens=8)


def test_batch_invariance_is_off_by_default_in_every_mode_and_the_flag_reaches_each() -> None:
    """--batch-invariant (one product layout: a sequence's bits never depend on its batch) is an opt-in."""
    from joules.runtime.generation.scheduler import EngineConfig

    batch = ["batch", "chat", "i.jsonl", "-o", "o.jsonl"]
    stream = ["stream", "chat", "--source", "-"]
    parse = build_parser().parse_args
    off = [EngineConfig(), ServeConfig(), parse(batch), parse(stream), serve_config(parse(["serve"]))]
    assert [x.batch_invariant for x in off] == [False] * 5
    on = [parse([*batch, "--batch-invariant"]), parse([*stream, "--batch-invariant"])]
    on.append(serve_config(parse(["serve", "--batch-invariant"])))
    assert [x.batch_invariant for x in on] == [True] * 3
