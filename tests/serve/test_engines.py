"""The generation seam: ONNX in process or tensor-parallel ranks, the cap refusal, and a rank's death.

Real rank processes on the tiny random Llama (4 query / 2 KV heads: 2 ranks get one KV group each).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from joules.bundle import Bundle
from joules.cli.common import parallel_options
from joules.errors import BundleError, ConfigError, EngineUnavailableError
from joules.imports.weights_only import import_weights_only
from joules.parallel import LlamaShape
from joules.parallel.decoder import DEFAULT_SLOTS
from joules.parallel.plan import Budget, ShardPlan
from joules.runtime.generation import Engine, EngineConfig, GenerationRequest, SamplingParams, engine_from_bundle
from joules.serve.engines import ParallelOptions, fit_slots, open_generation_engine
from joules.settings import Settings
from tests.helpers import run_joules

LEN = 128
PROMPTS = ["Héllo", "The capital of France is", "世界你好", "def fibonacci(n):", "Привет, мир!"]


@pytest.fixture(scope="module")
def chat_home(tmp_path_factory: pytest.TempPathFactory, tiny_llm_bundle: Path) -> Path:
    home = tmp_path_factory.mktemp("tp-home")
    run_joules("import", str(tiny_llm_bundle), "--name", "chat", "--promote", home=home, check=True)
    return home


@pytest.fixture(scope="module")
def weights_only_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_llm_dir: Path) -> Path:
    return import_weights_only(tiny_llm_dir, tmp_path_factory.mktemp("wo")).path


@pytest.fixture()
def open_engine(tmp_path: Path) -> Iterator[Callable[..., Engine]]:
    engines: list[Engine] = []

    def make(bundle: Path, seqs: int = 4, **parallel: object) -> Engine:
        engine = open_generation_engine(
            Bundle.load(bundle),
            EngineConfig(max_model_len=LEN, max_num_seqs=seqs, prefix_cache_slots=0, max_num_batched_tokens=1024),
            parallel=ParallelOptions(**parallel),  # type: ignore[arg-type]
            settings=Settings(home=tmp_path / "home"),
        )
        engines.append(engine)
        return engine

    yield make
    for e in engines:
        e.close()


def _greedy(prompt: str, max_tokens: int = 16, **kw: object) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, params=SamplingParams(max_tokens=max_tokens, temperature=0.0, **kw))


def _generate(home: Path, *flags: str, prompt: str = "Héllo") -> dict[str, object]:
    args = ["generate", "chat", prompt, "--max-tokens", "16", "--temperature", "0", "--max-model-len", str(LEN)]
    return json.loads(run_joules(*args, *flags, "--json", home=home, check=True).stdout)


def test_generate_split_two_ways_gives_the_unsplit_text(chat_home: Path) -> None:
    tp1 = _generate(chat_home, "--tensor-parallel", "1")
    tp2 = _generate(chat_home, "--tensor-parallel", "2")
    onnx = _generate(chat_home)
    assert tp1["usage"] == tp2["usage"] and tp1["text"] == tp2["text"]
    assert tp2["text"] == onnx["text"]  # the torch ranks and ONNX Runtime agree on the greedy choice too
    assert tp2["usage"]["completion_tokens"] > 0  # type: ignore[index]


def test_engine_split_two_ways_matches_tp1_on_20_prompts_of_64_tokens(
    open_engine: Callable[..., Engine], tiny_llm_bundle: Path
) -> None:
    # All 20 in one batch: 64 decode steps of 20 sequences (the prompts' prefill in the first step).
    tp1 = open_engine(tiny_llm_bundle, seqs=20, tensor_parallel=1)
    tp2 = open_engine(tiny_llm_bundle, seqs=20, tensor_parallel=2)
    rng = np.random.default_rng(0)
    vocab = tp1.spec.vocab_size

    def requests() -> list[GenerationRequest]:
        # Prompts of 1..40 random tokens.
        return [
            GenerationRequest(
                prompt_token_ids=ids,
                params=SamplingParams(max_tokens=64, temperature=0.0, ignore_eos=True, logprobs=True, top_logprobs=5),
            )
            for ids in prompts
        ]

    prompts = [[int(t) for t in rng.integers(0, vocab, int(rng.integers(1, 41)))] for _ in range(20)]
    one, two = tp1.generate_many(requests()), tp2.generate_many(requests())
    compared = 0
    for a, b in zip(one, two, strict=True):
        assert a.token_ids == b.token_ids and len(a.token_ids) == 64
        for la, lb in zip(a.logprobs or (), b.logprobs or (), strict=True):
            assert la.token_id == lb.token_id and abs(la.logprob - lb.logprob) < 1e-4
            assert [t for t, _ in la.top] == [t for t, _ in lb.top]
            np.testing.assert_allclose([x for _, x in la.top], [x for _, x in lb.top], atol=1e-4, rtol=0)
            compared += 1
    assert compared == 20 * 64


def test_a_weights_only_bundle_runs_only_on_the_rank_path(
    open_engine: Callable[..., Engine], weights_only_bundle: Path, tiny_llm_bundle: Path, tmp_path: Path
) -> None:
    with pytest.raises(BundleError, match="--tensor-parallel"):
        engine_from_bundle(Bundle.load(weights_only_bundle), settings=Settings(home=tmp_path))
    alone = open_engine(weights_only_bundle)  # no --tensor-parallel: one worker
    split = open_engine(weights_only_bundle, tensor_parallel=2)
    onnx = open_engine(tiny_llm_bundle)
    want = onnx.generate(_greedy("The capital of France is")).token_ids
    assert alone.generate(_greedy("The capital of France is")).token_ids == want
    assert split.generate(_greedy("The capital of France is")).token_ids == want


def _need(bundle: Path, n: int) -> int:
    shape = LlamaShape.read(bundle)
    budget = Budget(num_slots=1, max_model_len=LEN, max_step_tokens=512, max_logit_rows=64)
    return ShardPlan(shape=shape, world_size=n, vocab_parallel=True).largest_rank(budget)["total"]


def test_a_model_over_the_cap_is_refused_before_any_rank_starts_naming_the_split_that_fits(
    chat_home: Path, tiny_llm_bundle: Path
) -> None:
    cap = (_need(tiny_llm_bundle, 1) + _need(tiny_llm_bundle, 2)) // 2
    args = ["generate", "chat", "hi", "--max-model-len", str(LEN), "--max-worker-memory", str(cap)]
    started = time.monotonic()
    proc = run_joules(*args, "--tensor-parallel", "1", home=chat_home)
    assert proc.returncode == 2, proc.stderr
    assert "--tensor-parallel 2" in proc.stderr and "MiB" in proc.stderr and "Traceback" not in proc.stderr
    assert len([x for x in proc.stderr.splitlines() if x.startswith("joules: error")]) == 1
    # split as it says, the same cap holds every rank
    ok = run_joules(*args, "--tensor-parallel", "2", "--temperature", "0", "--max-tokens", "4", home=chat_home)
    assert ok.returncode == 0, ok.stderr
    assert time.monotonic() - started < 600
    bad = run_joules("generate", "chat", "hi", "--max-worker-memory", "2200M", home=chat_home)
    assert bad.returncode == 2 and "--tensor-parallel" in bad.stderr  # a cap means worker processes


def test_the_ray_engine_with_tensor_parallel_is_refused() -> None:
    with pytest.raises(ConfigError, match="--engine ray with --tensor-parallel 2"):
        ParallelOptions(tensor_parallel=2, engine="ray")
    assert ParallelOptions(engine="ray").tensor_parallel is None
    # what `joules serve NAME --engine ray --tensor-parallel 2` parses to: refused before anything loads (exit 2)
    with pytest.raises(ConfigError, match="not supported"):
        parallel_options(argparse.Namespace(engine="ray", tensor_parallel=2, max_worker_memory="2200M"))
    assert parallel_options(argparse.Namespace(tensor_parallel=3, max_worker_memory="2G")) == ParallelOptions(
        tensor_parallel=3, max_worker_memory=2 << 30
    )
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ConfigError, match="--tensor-parallel"):
            ParallelOptions(tensor_parallel=bad)  # type: ignore[arg-type]


def test_fit_slots_keeps_running_sequences_first() -> None:
    config = EngineConfig(max_num_seqs=64, prefix_cache_slots=4)
    fitted = fit_slots(config, DEFAULT_SLOTS)
    assert fitted.num_slots == DEFAULT_SLOTS and fitted.max_num_seqs == 6 and fitted.prefix_cache_slots == 2
    assert fit_slots(config, 1).max_num_seqs == 1 and fit_slots(config, 1).prefix_cache_slots == 0
    small = EngineConfig(max_num_seqs=2, prefix_cache_slots=2)
    assert fit_slots(small, 8) is small


def _wait(cond: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def test_a_killed_rank_fails_requests_fast_then_the_group_is_restarted(
    open_engine: Callable[..., Engine], tiny_llm_bundle: Path
) -> None:
    engine = open_engine(tiny_llm_bundle, tensor_parallel=2, restart_delay_s=1.0)
    want = engine.generate(_greedy("Héllo")).token_ids
    first = engine.decoder.pids  # type: ignore[attr-defined]

    # in flight: a long completion is running when rank 1 dies
    stream = engine.stream(_greedy("Héllo", LEN - 8, ignore_eos=True))
    assert next(stream).token_ids  # it is running
    os.kill(first[1], signal.SIGKILL)
    started = time.monotonic()
    last = list(stream)[-1]
    assert last.finish_reason == "error" and "rank 1" in (last.error or "")
    assert time.monotonic() - started < 30  # fast, never a hang (a generous bound for a loaded machine)
    assert not engine.healthy and "rank 1" in (engine.unhealthy_reason or "")
    with pytest.raises(EngineUnavailableError):
        engine.generate(_greedy("Héllo"))  # a new request is refused at once

    # the supervisor restarts the group: a new one, healthy, answering as before
    assert _wait(lambda: engine.healthy, 120), engine.unhealthy_reason
    second = engine.decoder.pids  # type: ignore[attr-defined]
    assert not set(second) & set(first)
    assert engine.generate(_greedy("Héllo")).token_ids == want

    # a rank that dies while the engine is idle: readiness drops without any request
    os.kill(second[0], signal.SIGKILL)
    assert _wait(lambda: not engine.healthy, 10)
    with pytest.raises(EngineUnavailableError, match="rank 0"):
        engine.generate(_greedy("Héllo"))
    assert _wait(lambda: engine.healthy, 120), engine.unhealthy_reason
    assert engine.generate(_greedy("Héllo")).token_ids == want


def test_without_restarts_the_engine_stays_down(open_engine: Callable[..., Engine], tiny_llm_bundle: Path) -> None:
    engine = open_engine(tiny_llm_bundle, tensor_parallel=2, restart_delay_s=None)
    os.kill(engine.decoder.pids[1], signal.SIGKILL)  # type: ignore[attr-defined]
    assert _wait(lambda: not engine.healthy, 10)
    time.sleep(2.0)
    assert not engine.healthy
    with pytest.raises(EngineUnavailableError):
        engine.generate(_greedy("Héllo"))


def test_the_caller_of_a_split_engine_never_imports_torch(weights_only_bundle: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; from joules.bundle import Bundle; "
        "from joules.serve.engines import open_generation_engine, ParallelOptions; "
        "from joules.settings import Settings; from joules.runtime.generation import GenerationRequest, "
        "SamplingParams, EngineConfig; "
        f"e = open_generation_engine(Bundle.load(Path({str(weights_only_bundle)!r})), EngineConfig(max_model_len=64), "
        f"parallel=ParallelOptions(tensor_parallel=2), settings=Settings(home=Path({str(tmp_path)!r}))); "
        "r = e.generate(GenerationRequest(prompt='hi', params=SamplingParams(max_tokens=3, temperature=0))); "
        "e.close(); print(r.usage.completion_tokens, sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "[]" and int(out.stdout.split()[0]) >= 1


def test_a_bundle_without_safetensors_is_refused_on_the_rank_path(
    tiny_llm_bundle: Path, tmp_path: Path, open_engine: Callable[..., Engine]
) -> None:
    copy = tmp_path / "onnx-only"
    shutil.copytree(tiny_llm_bundle, copy)
    spec = (copy / "joules.yaml").read_text()
    assert "weights:" in spec
    bundle = Bundle.load(copy)
    files = {k: v for k, v in bundle.spec.files.items() if k not in ("weights", "weights_config")}
    from dataclasses import replace

    replace(bundle.spec, files=files).write(copy)
    with pytest.raises(ConfigError, match="safetensors"):
        open_engine(copy, tensor_parallel=2)


def test_generate_with_a_rank_started_apart_by_joules_worker(chat_home: Path, free_port: int) -> None:
    """--master-addr/--master-port: rank 0 in `joules generate`, rank 1 a `joules worker` (as on another machine)."""
    import subprocess

    from tests.helpers import JOULES

    want = _generate(chat_home, "--tensor-parallel", "1")
    group = ["--world-size", "2", "--master-addr", "127.0.0.1", "--master-port", str(free_port)]
    worker = subprocess.Popen(
        [*JOULES, "worker", "chat", "--rank", "1", *group, "--threads", "1"],
        env={**os.environ, "JOULES_HOME": str(chat_home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        got = _generate(
            chat_home, "--tensor-parallel", "2", "--master-addr", "127.0.0.1", "--master-port", str(free_port)
        )
        assert got["text"] == want["text"]
        assert worker.wait(timeout=60) == 0  # rank 0 closed the group: the worker leaves
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)
    for bad in (["--master-addr", "127.0.0.1"], ["--master-port", "1", "--tensor-parallel", "2"]):
        proc = run_joules("generate", "chat", "hi", *bad, home=chat_home)
        assert proc.returncode == 2 and "--master" in proc.stderr, proc.stderr
