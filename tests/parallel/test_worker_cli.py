"""Ranks on "another machine": rank 1 started by ``joules worker`` from the registry, rank 0 by the decoder."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from joules.errors import EngineUnavailableError
from joules.parallel import TensorParallelDecoder
from joules.registry import Registry
from joules.runtime.generation import StepSequence
from joules.settings import Settings
from tests.conftest import minilm_dir
from tests.helpers import JOULES, run_joules
from tests.parallel.llama import reference_logits


def test_rank_0_is_not_a_worker(tmp_path: Path) -> None:
    proc = run_joules(
        "worker",
        "x",
        "--rank",
        "0",
        "--world-size",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        "1",
        home=tmp_path,
    )
    assert proc.returncode == 2 and "rank 0 is the serving process" in proc.stderr


def test_a_group_across_processes_started_apart(tmp_path: Path, tiny_llama: Path, free_port: int) -> None:
    src = tmp_path / "llama"
    shutil.copytree(tiny_llama, src)
    shutil.copyfile(minilm_dir() / "tokenizer.json", src / "tokenizer.json")
    home = tmp_path / "home"
    run_joules("import", str(src), "--name", "llama", "--weights-only", "--promote", home=home, check=True)
    bundle = Registry(Settings(home=home)).load("llama")
    worker = subprocess.Popen(
        [
            *JOULES,
            "worker",
            "llama",
            "--rank",
            "1",
            "--world-size",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(free_port),
            "--threads",
            "1",
        ],
        env={**os.environ, "JOULES_HOME": str(home)},
        stderr=subprocess.PIPE,
    )
    try:
        dec = TensorParallelDecoder(
            bundle, tp=2, master_addr="127.0.0.1", master_port=free_port, num_slots=2, max_model_len=32
        )
        try:
            assert len(dec.pids) == 1  # rank 1 is not ours
            assert {s["rank"] for s in dec.rank_stats} == {0, 1}
            toks = np.array([5, 9, 14, 3, 77, 1])
            got = dec.step([StepSequence(slot=0, start=0, tokens=toks, all_logits=True)])[0]
            np.testing.assert_allclose(got, reference_logits(tiny_llama, toks), atol=1e-4, rtol=0)
            # The remote rank dies: rank 0 sees its connection close and the caller fails fast.
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
            t0 = time.monotonic()
            with pytest.raises(EngineUnavailableError):
                dec.step([StepSequence(slot=0, start=6, tokens=np.array([4]))])
            assert time.monotonic() - t0 < 60
            assert not dec.healthy
        finally:
            dec.close()
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.wait(timeout=10)
