"""TensorParallelDecoder against transformers: real rank processes, gloo and shared memory."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from joules.errors import ConfigError, EngineUnavailableError, InputError
from joules.parallel import LlamaShape, TensorParallelDecoder
from joules.parallel.plan import ShardPlan
from joules.runtime.generation import StepSequence
from tests.parallel.llama import reference_logits

TOL = 1e-4  # fp32; the split only reorders the all-reduce sums


def _script(dec: TensorParallelDecoder, model_dir: Path, seed: int = 0) -> int:
    """Three sequences in four slots: prefill beside decodes, a chunk continuing a prefill, every logit checked.

    Returns how many logit rows were compared.
    """
    rng = np.random.default_rng(seed)
    vocab = dec.config.vocab_size
    full = {0: rng.integers(0, vocab, 14), 2: rng.integers(0, vocab, 15), 3: rng.integers(0, vocab, 9)}
    ref = {slot: reference_logits(model_dir, toks) for slot, toks in full.items()}
    # (slot, start, n, all_logits) per step: past lengths differ in every step after the first.
    steps = [
        [(0, 0, 7, True), (2, 0, 3, False)],
        [(0, 7, 1, False), (2, 3, 6, True), (3, 0, 5, False)],
        [(0, 8, 1, False), (2, 9, 1, False), (3, 5, 1, True)],
        [(3, 6, 1, False), (0, 9, 1, False)],
        [(2, 10, 5, True), (0, 10, 1, False), (3, 7, 2, False)],
        [(0, 11, 3, False)],
    ]
    compared = 0
    for step in steps:
        seqs = [StepSequence(slot=s, start=a, tokens=full[s][a : a + n], all_logits=al) for s, a, n, al in step]
        outs = dec.step(seqs)
        assert len(outs) == len(seqs)
        for (slot, start, n, all_logits), got in zip(step, outs, strict=True):
            assert got.dtype == np.float32
            want = ref[slot][start : start + n] if all_logits else ref[slot][start + n - 1]
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
            compared += want.size // vocab
    return compared


@pytest.fixture(scope="module")
def tp2(tiny_llama: Path) -> Iterator[TensorParallelDecoder]:
    """2 ranks on shared memory, forwards cut at 5 tokens and 3 logit rows, a memory cap applied by the OS."""
    with TensorParallelDecoder(
        tiny_llama,
        tp=2,
        num_slots=4,
        max_model_len=32,
        max_step_tokens=5,
        max_logit_rows=3,
        max_worker_memory="1500M",
    ) as dec:
        yield dec


def test_tp1_matches_transformers(tiny_llama: Path) -> None:
    with TensorParallelDecoder(tiny_llama, tp=1, num_slots=4, max_model_len=32) as dec:
        assert _script(dec, tiny_llama) > 20


def test_tp2_matches_transformers_with_mixed_steps(tp2: TensorParallelDecoder, tiny_llama: Path) -> None:
    assert _script(tp2, tiny_llama, seed=1) > 20
    assert tp2.rank_stats[0]["error"] is None


def test_tp2_ranks_hold_their_share(tp2: TensorParallelDecoder) -> None:
    stats = tp2.report()
    plan = tp2.plan
    assert [s["weight_bytes"] for s in stats] == [plan.weight_elements(r) * 4 for r in range(2)]
    total = sum(e.nbytes for e in tp2.index.tensors.values())
    replicated = (2 * tp2.shape.num_layers + 1) * tp2.shape.hidden_size * 4  # the norms
    assert sum(s["weight_bytes"] for s in stats) == total + replicated
    for s in stats:
        # 3 KV groups split 2 + 1, MLP and vocabulary evenly: every rank between 1/3 and 2/3 of the model
        assert total / 3 < s["weight_bytes"] < 2 * total / 3
        assert s["memory"]["RssAnon"] > 0 and s["memory"]["VmRSS"] >= s["memory"]["RssAnon"]


def test_tp2_cap_is_enforced_by_the_os(tp2: TensorParallelDecoder) -> None:
    cap = 1500 * 2**20
    for s in tp2.rank_stats:
        assert s["cap"]["limit"] == cap
        if s["cap"]["kind"] == "rlimit_data":
            limits = Path(f"/proc/{s['pid']}/limits").read_text().splitlines()
            line = next(x for x in limits if x.startswith("Max data size"))
            assert line.split()[3] == str(cap)


def test_copy_slot_continues_from_the_copy(tp2: TensorParallelDecoder, tiny_llama: Path) -> None:
    rng = np.random.default_rng(7)
    toks = rng.integers(0, tp2.config.vocab_size, 10)
    ref = reference_logits(tiny_llama, toks)
    tp2.step([StepSequence(slot=1, start=0, tokens=toks[:6])])
    tp2.copy_slot(1, 3, 6)
    got = tp2.step([StepSequence(slot=3, start=6, tokens=toks[6:10], all_logits=True)])[0]
    np.testing.assert_allclose(got, ref[6:10], atol=TOL, rtol=0)


def test_bad_steps_are_input_errors(tp2: TensorParallelDecoder) -> None:
    with pytest.raises(InputError, match="slot 9"):
        tp2.step([StepSequence(slot=9, start=0, tokens=np.array([1]))])
    with pytest.raises(InputError, match="max_model_len"):
        tp2.step([StepSequence(slot=0, start=31, tokens=np.array([1, 2]))])
    with pytest.raises(InputError, match="token ids"):
        tp2.step([StepSequence(slot=0, start=0, tokens=np.array([101]))])
    assert tp2.healthy  # refused before reaching the ranks


def test_tp3_unequal_groups_over_gloo(tiny_llama_tied: Path) -> None:
    plan = ShardPlan(shape=LlamaShape.read(tiny_llama_tied), world_size=3)
    assert [s.kv_heads for s in plan.shards] == [(0, 2), (2, 3), (3, 4)]
    assert [s.ffn for s in plan.shards] == [(0, 34), (34, 67), (67, 100)]
    with TensorParallelDecoder(tiny_llama_tied, tp=3, num_slots=4, max_model_len=32, transport="gloo") as dec:
        assert _script(dec, tiny_llama_tied, seed=2) > 20


def test_tp2_replicated_vocabulary(tiny_llama_tied: Path) -> None:
    with TensorParallelDecoder(
        tiny_llama_tied, tp=2, num_slots=4, max_model_len=32, vocab_parallel=False, transport="gloo"
    ) as dec:
        assert _script(dec, tiny_llama_tied, seed=3) > 20
        full = dec.shape.vocab_size * dec.shape.hidden_size * 4
        assert all(s["weight_bytes"] > full for s in dec.rank_stats)  # every rank holds the whole embedding


@pytest.mark.parametrize(("victim", "transport"), [(1, "shm"), (0, "gloo")])
def test_a_killed_rank_fails_fast_and_for_good(tiny_llama: Path, victim: int, transport: str) -> None:
    dec = TensorParallelDecoder(tiny_llama, tp=2, num_slots=2, max_model_len=32, transport=transport)
    try:
        seq = [StepSequence(slot=0, start=0, tokens=np.array([1, 2, 3]))]
        dec.step(seq)
        os.kill(dec.pids[victim], signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(EngineUnavailableError, match=f"rank {victim}"):
            dec.step(seq)
        assert time.monotonic() - t0 < 20  # generous: a broken promise here is a hang, not a slow answer
        assert not dec.healthy
        with pytest.raises(EngineUnavailableError):
            dec.step(seq)
        with pytest.raises(EngineUnavailableError):
            dec.copy_slot(0, 1, 2)
    finally:
        dec.close()
    assert all(_gone(pid) for pid in dec.pids)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_cap_too_small_is_refused_before_any_rank_starts(tiny_llama: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="per-rank memory cap of 100 MiB") as e:
        TensorParallelDecoder(tiny_llama, tp=1, max_worker_memory="100M")
    assert "raise --max-worker-memory" in str(e.value)
    assert time.monotonic() - t0 < 5  # no rank was started


def test_a_rank_killed_mid_step_fails_that_step_and_restart_brings_the_group_back(tiny_llama: Path) -> None:
    import threading

    dec = TensorParallelDecoder(tiny_llama, tp=2, num_slots=2, max_model_len=32)
    try:
        seq = [StepSequence(slot=0, start=0, tokens=np.arange(1, 9), all_logits=True)]
        want = dec.step(seq)[0]
        victim = dec.pids[1]
        os.kill(victim, signal.SIGSTOP)  # rank 0 will wait for it inside the step's first all-reduce
        box: dict[str, object] = {}

        def call() -> None:
            try:
                dec.step(seq)
                box["result"] = "answered"
            except EngineUnavailableError as e:
                box["result"] = e

        th = threading.Thread(target=call)
        th.start()
        th.join(1.0)
        assert th.is_alive()  # in flight, waiting for the stopped rank
        os.kill(victim, signal.SIGKILL)
        th.join(20)
        assert not th.is_alive() and isinstance(box["result"], EngineUnavailableError)
        assert "killed by signal 9" in str(box["result"])
        assert not dec.healthy
        dec.restart()
        assert dec.healthy and dec.pids[1] != victim
        np.testing.assert_array_equal(dec.step(seq)[0], want)
    finally:
        dec.close()


def test_the_caller_never_imports_torch(tiny_llama: Path) -> None:
    import subprocess
    import sys

    code = "\n".join(
        [
            "import sys, numpy as np",
            "from joules.parallel import TensorParallelDecoder",
            "from joules.runtime.generation import StepSequence",
            f"with TensorParallelDecoder({str(tiny_llama)!r}, tp=2, num_slots=1, max_model_len=16) as d:",
            "    d.step([StepSequence(slot=0, start=0, tokens=np.arange(4))])",
            "print(sorted(m for m in ('torch', 'transformers', 'safetensors') if m in sys.modules))",
        ]
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "[]"
