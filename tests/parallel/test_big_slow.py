"""A model larger than one worker's cap: the acceptance script's 3.3 GB random Llama (slow: builds and copies it)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from joules.errors import ConfigError
from joules.parallel import TensorParallelDecoder
from joules.parallel.memory import parse_size, process_memory
from joules.registry import Registry
from joules.runtime.generation import EngineConfig, GenerationRequest, SamplingParams, StepSequence
from joules.serve.engines import ParallelOptions, open_generation_engine
from joules.settings import Settings
from tests.conftest import minilm_dir
from tests.helpers import run_joules

BUILD = """
import sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=49152, hidden_size=1536, intermediate_size=4224, num_hidden_layers=28,
                  num_attention_heads=12, num_key_value_heads=6, max_position_embeddings=2048,
                  tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
LlamaForCausalLM(cfg).to(torch.float32).save_pretrained(sys.argv[1])
"""
CAP = "2200M"


@pytest.fixture(scope="module")
def big_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("big")
    src = tmp_path / "big"
    # Built in a child process: this test's own memory stays small (torch would keep the 3.3 GB).
    subprocess.run([sys.executable, "-c", BUILD, str(src)], check=True, timeout=1200)
    shutil.copyfile(minilm_dir() / "tokenizer.json", src / "tokenizer.json")
    home = tmp_path / "home"
    run_joules("import", str(src), "--name", "big", "--weights-only", "--promote", home=home, check=True)
    shutil.rmtree(src)
    return home


@pytest.mark.slow
def test_a_model_over_the_cap_is_refused_unsplit_and_runs_split_three_ways(big_home: Path) -> None:
    bundle = Registry(Settings(home=big_home)).load("big")
    cap = parse_size(CAP)

    with pytest.raises(ConfigError, match=r"--tensor-parallel [2-9]") as refused:
        TensorParallelDecoder(bundle, tp=1, max_worker_memory=CAP)
    assert "weights 3,123 MiB" in str(refused.value)

    with TensorParallelDecoder(bundle, tp=3, max_worker_memory=CAP) as dec:
        assert dec.num_slots >= 1
        rng = np.random.default_rng(0)
        out = dec.step([StepSequence(slot=0, start=0, tokens=rng.integers(0, 49152, 600))])
        for k in range(4):
            assert np.isfinite(out[0]).all()
            out = dec.step([StepSequence(slot=0, start=600 + k, tokens=np.array([int(np.argmax(out[0]))]))])
        for pid in dec.pids:
            m = process_memory(pid)
            assert 800 * 2**20 < m["RssAnon"] < cap, m  # holds a third of the weights, under the cap
            assert m["VmRSS"] < cap and m["VmHWM"] < cap, m
            limits = Path(f"/proc/{pid}/limits").read_text().splitlines()
            line = next(x for x in limits if x.startswith("Max data size"))
            assert int(line.split()[3]) <= cap
        weights = [s["weight_bytes"] for s in dec.rank_stats]
        assert max(weights) - min(weights) < 0.01 * max(weights)  # 6 KV heads, 4224 neurons: even thirds


@pytest.mark.slow
def test_the_commands_refuse_it_unsplit_and_serve_it_split_three_ways_under_the_cap(
    big_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through the seam every command uses: exit code 2 naming the split, then an engine whose ranks stay capped."""
    refused = run_joules(
        "generate", "big", "hello world", "--raw", "--tensor-parallel", "1", "--max-worker-memory", CAP, home=big_home
    )
    assert refused.returncode == 2 and re.search(r"--tensor-parallel [2-9]", refused.stderr), refused.stderr
    assert "Traceback" not in refused.stderr

    registry = Registry(Settings(home=big_home))
    engine = open_generation_engine(
        registry.load("big"),
        EngineConfig(max_model_len=2048),
        parallel=ParallelOptions(tensor_parallel=3, max_worker_memory=parse_size(CAP)),
        settings=registry.settings,
    )
    try:
        r = engine.generate(
            GenerationRequest(
                prompt="hello world", params=SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
            )
        )
        assert r.usage.completion_tokens == 4
        ranks = engine.decoder.report()  # type: ignore[attr-defined]
    finally:
        engine.close()
    cap = parse_size(CAP)
    for s in ranks:
        m = s["memory"]
        assert 800 * 2**20 < m["RssAnon"] < cap and m["VmRSS"] < cap and m["VmHWM"] < cap, s
    with capsys.disabled():  # the figures docs/parallel.md quotes
        print(
            "\nbig split 3 under",
            CAP,
            "(MiB RssAnon / VmRSS / VmHWM per rank):",
            [(s["memory"]["RssAnon"] >> 20, s["memory"]["VmRSS"] >> 20, s["memory"]["VmHWM"] >> 20) for s in ranks],
        )
